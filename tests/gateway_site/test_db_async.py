"""The hot path's two writes in the event loop (gateway_site/db_async.py): the budget reservation
(`budget_reserve_async`) and the record with its settlement (`usage_records_commit_async`), on the
loop's own psycopg connections; what they cannot do goes to a database thread as before."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection, connections
from django.utils import timezone

from accounting import budgets as budgets_module
from accounting.budgets import BudgetExceeded, _budgets_load, budget_reserve_async
from accounting.models import Budget, BudgetAlert, BudgetPeriod, BudgetReservation, UsageRecord
from accounting.services import RecordWrite, tenant_create, usage_records_commit_async
from gateway_site import db_async, db_executor
from tests.accounting.test_record_statement import every_field

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def in_the_loop(settings, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("the loop's connections are PostgreSQL's")
    settings.GATEWAY_DB_THREADS = 1  # as in a server process: the tests' shared transaction is off
    settings.GATEWAY_DB_ASYNC_CONNECTIONS = 2
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
    monkeypatch.setattr(db_executor, "_executor", executor)
    yield
    await db_async.close()
    executor.submit(connections.close_all).result()  # the test database must be droppable
    executor.shutdown()


async def _refuse(*args, **kwargs):
    """`db_call` for a test whose writes must stay in the event loop."""
    raise AssertionError("went to a database thread")


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
    return request_id, await budget_reserve_async(budgets=budgets, request_id=request_id, estimate=Decimal(estimate))


async def test_a_known_period_is_held_in_the_loop(monkeypatch):
    _, budgets = await budgeted()
    _, first = await reserve(budgets)  # the period's first request finds its row on a thread
    monkeypatch.setattr(budgets_module, "db_call", _refuse)

    request_id, held = await reserve(budgets)

    assert held.period_ids == first.period_ids and held.amount == Decimal("0.50")
    period = await BudgetPeriod.objects.aget()
    assert period.reserved_usd == Decimal("1.00")
    assert await BudgetReservation.objects.filter(request_id=request_id).aexists()


async def test_a_refusal_still_names_its_figures():
    _, budgets = await budgeted(amount="1.00")
    await reserve(budgets, "0.60")

    with pytest.raises(BudgetExceeded) as refused:
        await reserve(budgets, "0.60")

    assert "1.00" in str(refused.value) and await BudgetReservation.objects.acount() == 1


async def test_records_settle_and_raise_alerts_in_the_loop(monkeypatch):
    tenant, budgets = await budgeted(thresholds=[5])  # $0.50 of $10
    request_id, reservation = await reserve(budgets, "0.80")  # the period's row is found on a thread
    monkeypatch.setattr(budgets_module, "db_call", _refuse)
    raised: list[int] = []

    async def on_alert(ids):
        raised.extend(ids)

    writes = [
        RecordWrite(fields=fields_now(tenant, uuid.UUID(request_id), "0.60"), budgets=budgets, reservation=reservation),
        RecordWrite(fields=fields_now(tenant, uuid.uuid4(), "0.01"), budgets=budgets),
    ]
    ids = await usage_records_commit_async(writes, on_alert=on_alert)

    assert ids == [
        await UsageRecord.objects.filter(request_id=write.fields["request_id"]).values_list("pk", flat=True).aget()
        for write in writes
    ]
    period = await BudgetPeriod.objects.aget()
    assert period.spent_usd == Decimal("0.61") and period.reserved_usd == 0
    assert raised == [await BudgetAlert.objects.values_list("pk", flat=True).aget()]


async def test_a_period_row_deleted_meanwhile_leaves_the_record_to_the_general_path():
    tenant, budgets = await budgeted()
    request_id, reservation = await reserve(budgets)
    await BudgetPeriod.objects.all().adelete()

    async def on_alert(ids):
        raise AssertionError(ids)

    writes = [RecordWrite(fields=fields_now(tenant, uuid.UUID(request_id), "0.25"), budgets=budgets, reservation=reservation)]
    assert await usage_records_commit_async(writes, on_alert=on_alert) is None
    assert await UsageRecord.objects.acount() == 0  # nothing written: the thread's transaction writes it


async def test_kept_content_goes_to_the_general_path():
    tenant, budgets = await budgeted()
    fields = fields_now(tenant, uuid.uuid4(), "0.25") | {"content": {"messages": [], "completion": "hi"}}

    async def on_alert(ids):
        raise AssertionError(ids)

    assert await usage_records_commit_async([RecordWrite(fields=fields, budgets=budgets)], on_alert=on_alert) is None


async def test_the_loops_commits_keep_the_roles_synchronous_commit():
    """The gateway sets no `synchronous_commit` of its own: the role's (docs/reliability.md)."""
    tenant, budgets = await budgeted()
    await reserve(budgets)  # the period's first request finds its row on a thread
    request_id, reservation = await reserve(budgets)  # on the loop's connection
    writes = [RecordWrite(fields=fields_now(tenant, uuid.UUID(request_id), "0.25"), budgets=budgets,
                          reservation=reservation)]

    assert await usage_records_commit_async(writes, on_alert=_refuse) is not None
    _, found = await db_async.statement("SELECT current_setting('synchronous_commit')", [])

    assert found == [("on",)]  # the test database's role keeps PostgreSQL's default
    # Committed and visible to another session at once.
    period = await BudgetPeriod.objects.aget()
    assert (period.spent_usd, period.reserved_usd) == (Decimal("0.25"), Decimal("0.50"))
    assert await UsageRecord.objects.filter(request_id=request_id).aexists()


async def test_a_cut_connection_fails_one_statement_as_djangos_error_and_is_replaced():
    _, first = await db_async.statement("SELECT pg_backend_pid()", [])
    (pid,) = first[0]
    await sync_to_async(_terminate)(pid)  # a database restart, say

    with pytest.raises(OperationalError):
        await db_async.statement("SELECT pg_backend_pid()", [])
    _, again = await db_async.statement("SELECT pg_backend_pid()", [])

    assert again[0][0] != pid


def _terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


async def test_a_broker_that_fails_costs_the_alert_notice_not_the_records(monkeypatch, caplog):
    from routing import record as record_module

    tenant, budgets = await budgeted(thresholds=[5])
    request_id, reservation = await reserve(budgets, "0.80")

    def broker_down(alert_id):
        raise ConnectionError("broker down")

    monkeypatch.setattr(record_module, "_alert_enqueue", broker_down)
    writes = [RecordWrite(fields=fields_now(tenant, uuid.UUID(request_id), "0.60"), budgets=budgets, reservation=reservation)]

    outcomes = await record_module._records_write(writes, retry=False)

    assert outcomes == [None]
    assert await UsageRecord.objects.acount() == 1 and await BudgetAlert.objects.acount() == 1
    assert "not handed to Celery" in caplog.text


async def test_holds_that_meet_on_a_period_row_go_out_as_one_statement(monkeypatch):
    _, budgets = await budgeted()
    await reserve(budgets)  # the period's row is found on a thread
    monkeypatch.setattr(budgets_module, "db_call", _refuse)
    statements = []
    run = db_async.statement

    async def counted(sql, params):
        statements.append(sql)
        return await run(sql, params)

    monkeypatch.setattr(db_async, "statement", counted)

    held = await asyncio.gather(*(reserve(budgets, "0.10") for _ in range(6)))

    # All six asked in the same turn of the loop: one statement holds them.
    assert len(statements) == 1
    assert all(reservation.amount == Decimal("0.10") for _, reservation in held)
    period = await BudgetPeriod.objects.aget()
    assert period.reserved_usd == Decimal("1.10")
    assert await BudgetReservation.objects.acount() == 7


async def test_a_group_that_does_not_fit_is_held_one_by_one():
    _, budgets = await budgeted(amount="1.00")
    await reserve(budgets, "0.10")  # the period's row is found on a thread

    outcomes = await asyncio.gather(*(reserve(budgets, "0.40") for _ in range(3)), return_exceptions=True)

    # 0.10 + 3 x 0.40 does not fit: each then tries alone, and the two that fit are held.
    refused = [outcome for outcome in outcomes if isinstance(outcome, BudgetExceeded)]
    assert len(refused) == 1
    period = await BudgetPeriod.objects.aget()
    assert period.reserved_usd == Decimal("0.90") and await BudgetReservation.objects.acount() == 3


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
        assert (await db_async.statement("SELECT 1", []))[1] == [(1,)]  # a connection through the relay
        relay.silent = True
        started = time.monotonic()
        with pytest.raises(OperationalError, match="did not answer within 1 s"):
            await asyncio.wait_for(db_async.statement("SELECT 1", []), timeout=60)
        # The timeout, then psycopg's cancel (refused at once) and its 5 s wait for the query's end.
        assert time.monotonic() - started < 10
        relay.silent = False
        assert (await db_async.statement("SELECT 1", []))[1] == [(1,)]  # on a new connection
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


async def test_the_loops_statement_writes_every_field_as_the_orm_does():
    """The event loop's statement builds its rows from the fields (no model instance): each stored
    value, defaults included, is what Django stores for the same fields."""
    from django.forms.models import model_to_dict

    tenant, budgets = await budgeted()
    await reserve(budgets)  # the period row is known
    given = fields_now(tenant, uuid.uuid4(), "0.25")
    sparse = {name: given[name] for name in ("request_id", "tenant_id", "endpoint", "cost_usd", "status")}
    [full_id] = await usage_records_commit_async([RecordWrite(fields=given, budgets=budgets)], on_alert=_refuse)
    [sparse_id] = await usage_records_commit_async(
        [RecordWrite(fields=sparse | {"request_id": uuid.uuid4()}, budgets=budgets)], on_alert=_refuse,
    )

    @sync_to_async
    def stored_against_orm(pk, fields):
        by_orm = UsageRecord.objects.create(**(fields | {"request_id": uuid.uuid4()}))
        skip = ("id", "request_id", "created_at")
        mine, theirs = (
            {k: v for k, v in model_to_dict(UsageRecord.objects.get(pk=key)).items() if k not in skip}
            for key in (pk, by_orm.pk)
        )
        return mine, theirs

    mine, theirs = await stored_against_orm(full_id, given)
    assert mine == theirs
    mine, theirs = await stored_against_orm(sparse_id, sparse)
    assert mine == theirs  # the defaults of every field left out
    period = await BudgetPeriod.objects.aget()
    assert period.spent_usd == Decimal("0.50")
