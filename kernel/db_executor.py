"""Database work of the hot path, on a small pool of long-lived threads with long-lived connections.

`sync_to_async` (thread-sensitive, the default) runs a request's sync calls on a thread that
Django's ASGI handler starts for that request: a new thread per request, and a new database
connection per request, opened on that thread and closed when the request ends. The database
work of the hot path (the config caches' loads, alerts handed to Celery, SQLite's money steps:
`kernel.db_async.steps`) needs neither: each call is self-contained. `db_call` runs them on
`GATEWAY_DB_THREADS` threads that live as long as the process, and each thread keeps its own connection from one call to the next, so a call costs no
new connection: at most `GATEWAY_DB_THREADS` connections per process.

A kept connection is checked (one `SELECT 1`) before a call when the last call on it failed with
a database error (an outage cut it: it is replaced at once, on the next call) or when it has been
idle for `IDLE_CHECK_SECONDS` (a database restart may have cut it since). Under load neither
happens and a call is just its own queries.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connections

# A connection unused for this long is checked before it is used again.
IDLE_CHECK_SECONDS = 1.0

_executor: ThreadPoolExecutor | None = None
_thread = threading.local()  # `last_used`: when this thread's connections last finished a call


def _executor_get() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=max(1, settings.GATEWAY_DB_THREADS), thread_name_prefix="gateway-db")
    return _executor


def _connections_check(now: float) -> None:
    """Close this thread's kept connections that may be broken; the next query reconnects."""
    idle = now - getattr(_thread, "last_used", now) >= IDLE_CHECK_SECONDS
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        if connection.in_atomic_block or not connection.get_autocommit():
            connection.close()  # a call left a transaction open: never reuse its state
        elif connection.errors_occurred or idle:
            if connection.is_usable():
                connection.errors_occurred = False
            else:
                connection.close()


def _run(func, args, kwargs):
    _connections_check(time.monotonic())
    try:
        return func(*args, **kwargs)
    finally:
        _thread.last_used = time.monotonic()


async def db_call(func, /, *args, **kwargs):
    """Await `func(*args, **kwargs)` run on a database thread (context variables go along)."""
    # The executor directly rather than through `sync_to_async(thread_sensitive=False)`, whose
    # bookkeeping (executor choice, context copied back, exception re-raising) the hot path's
    # self-contained writes do not need: it was about 1 ms of CPU per request.
    job = functools.partial(contextvars.copy_context().run, _run, func, args, kwargs)
    return await asyncio.get_running_loop().run_in_executor(_executor_get(), job)


async def close_all() -> None:
    """Close every database thread's connections (tests: their database must be droppable)."""
    if _executor is None:
        return
    loop = asyncio.get_running_loop()
    threads = max(1, settings.GATEWAY_DB_THREADS)
    barrier = threading.Barrier(threads)

    def close() -> None:
        connections.close_all()
        barrier.wait(timeout=5)  # every thread takes one: each closes its own

    try:
        await asyncio.gather(*(loop.run_in_executor(_executor, close) for _ in range(threads)), return_exceptions=True)
    except RuntimeError:  # shut down: its threads are gone with their connections
        pass
