"""The money statements' connection pool (kernel/db_async.py): the budget reservation
(`budget_reserve`) and the record with its settlement (`usage_records_create`) on the event loop's
own psycopg connections: commits, outages, timeouts."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection, connections
from django.utils import timezone

from accounting import writes as writes_module
from accounting.budgets import _budgets_load, budget_reserve
from accounting.models import Budget, BudgetAlert, BudgetPeriod, UsageRecord
from accounting.services import RecordWrite, tenant_create, usage_records_create
from kernel import db_async
from tests.accounting.test_record_statement import every_field

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("the loop's connections are PostgreSQL's")


@sync_to_async
def budgeted(amount="10.00", thresholds=()):
    tenant = tenant_create(slug=f"t{uuid.uuid4().hex[:8]}")
    Budget.objects.create(tenant=tenant, amount_usd=Decimal(amount), period="monthly", hard=True,
                          alert_thresholds=list(thresholds))
    return tenant, _budgets_load(tenant.pk, 0)


def fields_now(tenant, request_id: uuid.UUID, cost: str) -> dict:
    """`every_field` created now: the loop's hold reserves in the current period."""
    return every_field(tenant, request_id, cost, created_at=timezone.now())


async def reserve(budgets, estimate="0.50"):
    request_id = str(uuid.uuid4())
    return request_id, await budget_reserve(budgets=budgets, request_id=request_id, estimate=Decimal(estimate))


async def test_the_loops_commits_keep_the_roles_synchronous_commit():
    """The gateway sets no `synchronous_commit` of its own: the role's (docs/reliability.md)."""
    tenant, budgets = await budgeted()
    await reserve(budgets)
    request_id, reservation = await reserve(budgets)
    writes = [RecordWrite(fields=fields_now(tenant, uuid.UUID(request_id), "0.25"), budgets=budgets,
                          reservation=reservation)]

    await usage_records_create(writes)
    found = await db_async.statement("SELECT current_setting('synchronous_commit')", [])

    assert found == [("on",)]  # the test database's role keeps PostgreSQL's default
    # Committed and visible to another session at once.
    period = await BudgetPeriod.objects.aget()
    assert (period.spent_usd, period.reserved_usd) == (Decimal("0.25"), Decimal("0.50"))
    assert await UsageRecord.objects.filter(request_id=request_id).aexists()


async def test_a_cut_connection_fails_one_statement_as_djangos_error_and_is_replaced():
    first = await db_async.statement("SELECT pg_backend_pid()", [])
    (pid,) = first[0]
    await sync_to_async(_terminate)(pid)  # a database restart, say

    with pytest.raises(OperationalError):
        await db_async.statement("SELECT pg_backend_pid()", [])
    again = await db_async.statement("SELECT pg_backend_pid()", [])

    assert again[0][0] != pid


def _terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


async def test_a_broker_that_fails_costs_the_alert_notice_not_the_records(monkeypatch, caplog):
    tenant, budgets = await budgeted(thresholds=[5])
    request_id, reservation = await reserve(budgets, "0.80")

    def broker_down(alert_id):
        raise ConnectionError("broker down")

    monkeypatch.setattr(writes_module, "_alert_enqueue", broker_down)
    writes = [RecordWrite(fields=fields_now(tenant, uuid.UUID(request_id), "0.60"), budgets=budgets, reservation=reservation)]

    outcomes = await writes_module.records_write(writes)

    assert outcomes == [None]
    assert await UsageRecord.objects.acount() == 1 and await BudgetAlert.objects.acount() == 1
    assert "not handed to Celery" in caplog.text


class _Relay:
    """A TCP relay to PostgreSQL in the test's event loop that can go silent: it then takes what
    either side sends and drops it, and closes new connections at once (psycopg's cancel
    request), as a network that drops a connection's packets, or a hung server, looks to the
    client: the bytes go out, nothing comes back."""

    def __init__(self, host: str, port: int) -> None:
        self.target, self.silent, self._pipes = (host, port), False, set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        if self.silent:
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pipe = asyncio.ensure_future(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader, writer) -> None:
        while data := await reader.read(65536):
            if not self.silent:
                writer.write(data)
                await writer.drain()
        writer.close()

    def close(self) -> None:
        self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()


async def test_a_database_gone_silent_on_an_open_connection_fails_the_statement_in_seconds(monkeypatch, settings):
    """Without `GATEWAY_DB_ANSWER_TIMEOUT` the statement would wait until TCP gives up."""
    settings.GATEWAY_DB_ANSWER_TIMEOUT = 1
    settings_dict = connections["default"].settings_dict
    relay = _Relay(settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432))
    monkeypatch.setitem(settings_dict, "PORT", await relay.start())
    try:
        assert (await db_async.statement("SELECT 1", [])) == [(1,)]  # a connection through the relay
        relay.silent = True
        started = time.monotonic()
        with pytest.raises(OperationalError, match="did not answer within 1 s"):
            await asyncio.wait_for(db_async.statement("SELECT 1", []), timeout=60)
        # The timeout, then psycopg's cancel (refused at once) and its 5 s wait for the query's end.
        assert time.monotonic() - started < 10
        relay.silent = False
        assert (await db_async.statement("SELECT 1", [])) == [(1,)]  # on a new connection
    finally:
        relay.close()


async def test_a_database_that_does_not_answer_fails_the_connection_in_seconds(monkeypatch):
    """A black hole: the TCP connection is accepted and nothing ever answers. Without libpq's
    connect_timeout (5 s, settings.py) the request would wait indefinitely."""
    assert connections["default"].settings_dict["OPTIONS"]["connect_timeout"] == 5  # the default
    silent = socket.create_server(("127.0.0.1", 0))
    settings_dict = connections["default"].settings_dict  # shared by every thread's connection
    monkeypatch.setitem(settings_dict, "PORT", silent.getsockname()[1])
    monkeypatch.setitem(settings_dict, "OPTIONS", {**settings_dict["OPTIONS"], "connect_timeout": 2})
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError):
            await asyncio.wait_for(db_async.statement("SELECT 1", []), timeout=15)
    finally:
        silent.close()
    assert time.monotonic() - started < 6
