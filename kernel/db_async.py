"""The one connection pool of the hot path's money statements.

The budget reservation and the UsageRecord with its settlement (`accounting.budgets`,
`accounting.services`) are statements run through `statement` (PostgreSQL) or `steps` (SQLite):

- **PostgreSQL**: each event loop keeps up to `GATEWAY_DB_ASYNC_CONNECTIONS` psycopg async
  connections of its own, opened on first use with the connection settings Django would use, in
  autocommit. The loop sends a statement and awaits the answer like any other socket (a hand-off
  to a database thread and back cost about 0.5 ms of wall time per statement on a 2-core
  machine). Statements are prepared on the server by psycopg's own rule, the connection's
  `prepare_threshold` (a statement text run that many times is prepared, then planned no more):
  the money statements are CTEs that cost more to plan than to run.
- **SQLite** (embedded mode): no server to talk to; `steps` runs a function of the same steps, as
  statements, in one transaction on Django's connection on a database thread
  (`kernel.db_executor`).

A connection that fails is closed and replaced by the next call; one idle for
`IDLE_CHECK_SECONDS` is checked first (a database restart may have cut it). psycopg's errors come
out as Django's (`django.db.OperationalError`, `IntegrityError`..., through Django's own
`DatabaseErrorWrapper`), so callers handle an outage as with the ORM. These connections see only
committed data: tests that drive the hot path use committed data (`transactional_db`).

These connections commit as the database role says: `ALTER ROLE <gateway> SET synchronous_commit =
off` makes their commits (and every other of the role's) answer before the WAL flush
(docs/reliability.md).

A statement (or the check of an idle connection) that gets no answer within
`GATEWAY_DB_ANSWER_TIMEOUT` seconds (10) fails as Django's `OperationalError`, as an
unreachable database does, and its connection is closed: a database that stops answering on a
connection already open (a black hole: the network drops the packets; or a server that hangs)
would otherwise hold the request until TCP gives up, minutes later. psycopg first tries to
cancel the query on the server, for up to 5 s, then waits up to 5 s more for it to end.

Why not psycopg_pool's `AsyncConnectionPool` (installed with psycopg[pool]): measured in process
under uvloop against this pool, a one-row prepared statement cost the same CPU alone (194-239 us
against 207-223 us on a slow machine) and 10-15 % more at 16 at once (170-237 against
162-199 us per statement), its checkout and return doing more (a lock, a reset check, its
maintenance tasks).
"""

from __future__ import annotations

import asyncio
import collections
import time

import psycopg
from django.conf import settings
from django.db import Error, InterfaceError, OperationalError, connections, transaction
from django.db.utils import DatabaseErrorWrapper

from kernel.db_executor import IDLE_CHECK_SECONDS, db_call
from kernel.loops import PerLoop

# psycopg's own default: a statement text run this many times on a connection is prepared.
PREPARE_THRESHOLD = 5


def postgresql() -> bool:
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


async def statement(sql: str, params: list | dict) -> list[tuple]:
    """PostgreSQL: run one statement in autocommit on the loop's pool; returns its rows."""
    return await _pools.get().run(sql, params)


async def steps(func, /, *args):
    """SQLite: `func(cursor, *args)` in one transaction on a database thread; returns its result.
    `func` rolls the transaction back with `transaction.set_rollback(True)`."""
    return await db_call(_in_transaction, func, args)


def _in_transaction(func, args):
    with transaction.atomic(), connections["default"].cursor() as cursor:
        return func(cursor, *args)


async def close() -> None:
    """Close the running loop's idle connections (tests: their database must be droppable)."""
    pool = _pools.pop()
    if pool is not None:
        while pool._idle:
            await _close(pool._idle.pop()[0])


def forget_closed_loops() -> None:
    """Drop the pools of event loops that are closed (their connections close as they go)."""
    _pools.forget_closed()


class _PsycopgErrors:
    """What Django's `DatabaseErrorWrapper` reads: the module whose errors it translates. Not
    `connections["default"].wrap_database_errors`: in the event loop each request's context gets a
    database wrapper of its own from Django, made on first use (about 2.5 % of a lone request's CPU
    when each statement asked for one)."""

    Database = psycopg
    errors_occurred = False  # set by the wrapper; these connections track their health themselves


_django_errors = DatabaseErrorWrapper(_PsycopgErrors())


class _Pool:
    def __init__(self) -> None:
        self._idle: collections.deque[tuple[psycopg.AsyncConnection, float]] = collections.deque()
        self._open = 0
        self._waiting: collections.deque[asyncio.Future] = collections.deque()

    async def run(self, sql: str, params: list | dict) -> list[tuple]:
        connection = await self._take()
        healthy = False
        try:
            with _django_errors:  # psycopg's errors raised as Django's
                async with asyncio.timeout(settings.GATEWAY_DB_ANSWER_TIMEOUT):
                    async with connection.cursor() as cursor:
                        await cursor.execute(sql, params)
                        found = await cursor.fetchall() if cursor.description is not None else []
                        healthy = True
                        return found
        except TimeoutError:
            raise OperationalError(
                f"The database did not answer within {settings.GATEWAY_DB_ANSWER_TIMEOUT:g} s"
            ) from None
        except Error as exc:
            # An error of the statement itself leaves the connection as good as it was.
            healthy = not (connection.broken or connection.closed or isinstance(exc, (OperationalError, InterfaceError)))
            raise
        finally:
            self._give(connection, healthy)

    async def _take(self) -> psycopg.AsyncConnection:
        while True:
            if self._idle:
                connection, last_used = self._idle.pop()
                if connection.closed or connection.broken:
                    self._open -= 1
                    continue
                if time.monotonic() - last_used >= IDLE_CHECK_SECONDS and not await _usable(connection):
                    self._open -= 1
                    continue
                return connection
            if self._open < settings.GATEWAY_DB_ASYNC_CONNECTIONS:
                self._open += 1
                try:
                    return await _connect()
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass on the turn this waiter was given
                raise

    def _give(self, connection: psycopg.AsyncConnection, healthy: bool) -> None:
        if healthy:
            self._idle.append((connection, time.monotonic()))
        else:
            self._open -= 1
            asyncio.ensure_future(_close(connection))
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


async def _connect() -> psycopg.AsyncConnection:
    django_connection = connections["default"]
    params = django_connection.get_connection_params()
    params.pop("cursor_factory", None)  # Django's is a sync client-side one
    # Django connects with `prepare_threshold=None` (no preparation) unless OPTIONS say otherwise.
    if params.get("prepare_threshold") is None:
        params["prepare_threshold"] = PREPARE_THRESHOLD
    with _django_errors:
        return await psycopg.AsyncConnection.connect(**params, autocommit=True)


async def _usable(connection: psycopg.AsyncConnection) -> bool:
    try:
        async with asyncio.timeout(settings.GATEWAY_DB_ANSWER_TIMEOUT):
            await connection.execute("SELECT 1")
        return True
    except (psycopg.Error, TimeoutError):
        await _close(connection)
        return False


async def _close(connection: psycopg.AsyncConnection) -> None:
    try:
        await connection.close()
    except psycopg.Error:
        pass


_pools: PerLoop[_Pool] = PerLoop(_Pool)
