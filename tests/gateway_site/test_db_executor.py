"""db_call: the hot path's database work on long-lived threads that keep their connections."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection, connections

from kernel import db_executor
from kernel.db_executor import db_call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def one_thread(settings, monkeypatch):
    """A database executor of one thread, so that successive calls share its connection."""
    settings.GATEWAY_DB_THREADS = 1
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
    monkeypatch.setattr(db_executor, "_executor", executor)
    yield
    executor.submit(connections.close_all).result()  # the test database must be droppable
    executor.shutdown()


def backend() -> tuple[str, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return threading.current_thread().name, cursor.fetchone()[0]


def terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("backend ids are PostgreSQL's")


async def test_calls_run_on_a_database_thread_and_keep_its_connection(one_thread):
    name, first = await db_call(backend)
    assert name.startswith("gateway-db")
    assert await db_call(backend) == (name, first)  # the same connection: no connect per call


async def test_a_connection_cut_under_a_call_is_replaced_on_the_next_call(one_thread):
    _, first = await db_call(backend)
    await sync_to_async(terminate)(first)  # from another connection
    with pytest.raises(OperationalError):  # the call that meets the cut fails (it may have written)
        await db_call(backend)
    _, second = await db_call(backend)
    assert second != first


async def test_an_idle_connection_is_checked_before_use(one_thread, monkeypatch):
    monkeypatch.setattr(db_executor, "IDLE_CHECK_SECONDS", 0.0)  # every kept connection counts as idle
    _, first = await db_call(backend)
    await sync_to_async(terminate)(first)  # as a database restart would, while the gateway was quiet
    _, second = await db_call(backend)  # checked, found dead, replaced: the call itself succeeds
    assert second != first


async def test_a_transaction_left_open_is_not_reused(one_thread):
    def leave_open():
        connection.set_autocommit(False)
        return backend()[1]

    first = await db_call(leave_open)
    _, second = await db_call(backend)
    assert second != first
