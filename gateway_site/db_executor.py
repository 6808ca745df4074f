"""Database work of the hot path, on a small pool of long-lived threads.

`sync_to_async` (thread-sensitive, the default) runs a request's sync calls on a thread that
Django's ASGI handler starts for that request: a new thread per request, and a new database
connection per request, opened on that thread and closed when the request ends. The writes of
the hot path (the budget reservation, the UsageRecord) need neither: they are self-contained
transactions. `db_call` runs them on `GATEWAY_DB_THREADS` threads that live as long as the
process, and hands each call's connection back when it ends — to psycopg's pool when one is
configured (PostgreSQL, `DATABASES[...]["OPTIONS"]["pool"]`), so a call costs no new
connection; without a pool the connection is closed, as Django would have done.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

_executor: ThreadPoolExecutor | None = None


def _executor_get() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=settings.GATEWAY_DB_THREADS, thread_name_prefix="gateway-db")
    return _executor


def _run_and_release(func, args, kwargs):
    try:
        return func(*args, **kwargs)
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()


async def db_call(func, /, *args, **kwargs):
    """Await `func(*args, **kwargs)` run on a database thread (context variables go along).

    With `GATEWAY_DB_THREADS = 0` it runs as plain `sync_to_async` does, on the request's
    thread and connection: what the in-process tests use, so that pytest-django's per-test
    transaction is visible to it (the end-to-end tests run the threads).
    """
    if settings.GATEWAY_DB_THREADS <= 0:
        return await sync_to_async(func)(*args, **kwargs)
    job = functools.partial(_run_and_release, func, args, kwargs)
    return await sync_to_async(job, thread_sensitive=False, executor=_executor_get())()
