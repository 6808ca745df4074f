"""The hot path's two writes run in the event loop, on psycopg's async connections.

The budget reservation and the UsageRecord with its settlement are each one prepared statement in
autocommit (`accounting.budgets`, `gateway_site.prepared`). Run through `db_executor.db_call`,
each costs a hand-off to a database thread and another back to the loop; a lone request paid
about 0.5 ms of wall time per hand-off on a 2-core machine (the thread and the loop each sleep
and are woken), more than the statement itself. Here the loop sends the statement on a
connection of its own and awaits the answer like any other socket.

Each event loop keeps up to `GATEWAY_DB_ASYNC_CONNECTIONS` connections, opened on first use, with
the connection settings Django would use. A connection that fails is closed and replaced by the
next call; one idle for `IDLE_CHECK_SECONDS` is checked first (a database restart may have cut
it), as the database threads do. Everything else (a first request of a budget period, several
hard budgets, a record that keeps content, a record that must fall back to the transaction, the
in-process tests' shared transaction with `GATEWAY_DB_THREADS = 0`) still goes through
`db_call`. psycopg's errors come out as Django's (`django.db.OperationalError`..., through
Django's own `wrap_database_errors`), so callers handle an outage as they always have.

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
maintenance tasks). Two statements a request make that about 1.5 % of a request's CPU at c=64.
"""

from __future__ import annotations

import asyncio
import collections
import time

import psycopg
from django.conf import settings
from django.db import Error, InterfaceError, OperationalError, connections
from django.db.utils import DatabaseErrorWrapper

from gateway_site.db_executor import IDLE_CHECK_SECONDS
from gateway_site.loops import PerLoop
from gateway_site.prepared import PREPARE_WHEN_ASKED


def in_loop() -> bool:
    """Whether the hot path's statements run in the event loop in this process."""
    return (
        settings.GATEWAY_DB_ASYNC_CONNECTIONS > 0
        and settings.GATEWAY_DB_THREADS > 0
        and settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    )


async def statement(sql: str, params: list) -> tuple[int, list[tuple]]:
    """Run one statement in autocommit; returns the rows it changed and the rows it returned."""
    return await _pools.get().run(sql, params)


async def close() -> None:
    """Close the running loop's idle connections (tests: their database must be droppable)."""
    pool = _pools.pop()
    if pool is not None:
        while pool._idle:
            await _close(pool._idle.pop()[0])


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

    async def run(self, sql: str, params: list) -> tuple[int, list[tuple]]:
        connection = await self._take()
        healthy = False
        try:
            with _django_errors:  # psycopg's errors raised as Django's
                async with asyncio.timeout(settings.GATEWAY_DB_ANSWER_TIMEOUT):
                    async with connection.cursor() as cursor:
                        await cursor.execute(sql, params, prepare=settings.GATEWAY_DB_PREPARED_STATEMENTS)
                        found = await cursor.fetchall() if cursor.description is not None else []
                        healthy = True
                        return cursor.rowcount, found
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
    if params.get("prepare_threshold") is None:
        params["prepare_threshold"] = PREPARE_WHEN_ASKED  # as `gateway_site.prepared` does for Django's
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
