"""Group commit of UsageRecords (accounting.services `usage_record_create`, batched by
`accounting.statements.Batched`): records that arrive while a write is on the wire share the next
one; spend, reservations and alerts come out as if each had been written alone; one bad record
does not sink the others."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError, connection

from accounting.budgets import _budgets_load, budget_reserve
from accounting.models import Budget, BudgetAlert, BudgetPeriod, BudgetReservation, UsageRecord
from accounting.services import RecordWrite, tenant_create, usage_record_create, usage_records_create

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2026, 11, 18, 15, 30, tzinfo=dt_timezone.utc)


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("transaction ids (xmin) are PostgreSQL's")


def budgeted_tenant(slug: str, amount: str = "100.00", thresholds: list[int] | None = None):
    tenant = tenant_create(slug=slug)
    Budget.objects.create(tenant=tenant, amount_usd=Decimal(amount), period="monthly", hard=True,
                          alert_thresholds=thresholds or [])
    return tenant, _budgets_load(tenant.pk, 0)


async def reserved_write(tenant, budgets, *, cost: str, estimate: str = "0.50") -> RecordWrite:
    request_id = str(uuid.uuid4())
    reservation = await budget_reserve(budgets=budgets, request_id=request_id, estimate=Decimal(estimate), now=NOW)
    fields = {"request_id": uuid.UUID(request_id), "tenant_id": tenant.pk, "endpoint": "chat.completions",
              "status": "success", "cost_usd": Decimal(cost), "created_at": NOW}
    return RecordWrite(fields=fields, budgets=budgets, reservation=reservation)


async def write_one(write: RecordWrite):
    return await usage_record_create(fields=write.fields, budgets=write.budgets, reservation=write.reservation)


def transactions_of_records() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(DISTINCT xmin::text) FROM {UsageRecord._meta.db_table}")
        return cursor.fetchone()[0]


async def test_records_arriving_together_share_transactions_and_settle_exactly():
    tenant, budgets = await sync_to_async(budgeted_tenant)("acme")
    writes = [await reserved_write(tenant, budgets, cost="0.01") for _ in range(40)]

    await asyncio.gather(*(write_one(write) for write in writes))

    assert await UsageRecord.objects.acount() == 40
    # All 40 were waiting before the writer's first turn: one statement.
    assert await sync_to_async(transactions_of_records)() == 1
    period = await BudgetPeriod.objects.aget()
    assert period.spent_usd == Decimal("0.40") and period.reserved_usd == 0
    assert not await BudgetReservation.objects.aexists()


async def test_a_lone_record_waits_for_nobody():
    tenant, budgets = await sync_to_async(budgeted_tenant)("acme")
    for cost in ("0.10", "0.20"):
        await write_one(await reserved_write(tenant, budgets, cost=cost))
    assert await sync_to_async(transactions_of_records)() == 2
    assert (await BudgetPeriod.objects.aget()).spent_usd == Decimal("0.30")


async def test_one_record_already_written_does_not_sink_the_others():
    tenant, budgets = await sync_to_async(budgeted_tenant)("acme")
    first = await reserved_write(tenant, budgets, cost="0.05")
    await write_one(first)
    others = [await reserved_write(tenant, budgets, cost="0.01") for _ in range(5)]
    again = RecordWrite(fields=dict(first.fields), budgets=budgets, reservation=first.reservation)

    # One transaction for the six fails on the duplicate request id: each is then written alone.
    outcomes = await asyncio.gather(*(write_one(write) for write in [*others[:3], again, *others[3:]]),
                                    return_exceptions=True)

    assert [type(outcome) for outcome in outcomes] == [tuple] * 3 + [IntegrityError] + [tuple] * 2
    assert await UsageRecord.objects.acount() == 6
    period = await BudgetPeriod.objects.aget()
    assert period.spent_usd == Decimal("0.10") and period.reserved_usd == 0


async def test_a_group_spanning_tenants_settles_each_period_and_raises_each_alert_once():
    acme, acme_budgets = await sync_to_async(budgeted_tenant)("acme", amount="1.00", thresholds=[50, 80])
    globex, globex_budgets = await sync_to_async(budgeted_tenant)("globex", amount="1.00", thresholds=[50])
    writes = [await reserved_write(acme, acme_budgets, cost="0.30", estimate="0.30") for _ in range(3)]
    writes += [await reserved_write(globex, globex_budgets, cost="0.20", estimate="0.20") for _ in range(2)]

    _, alert_ids = await usage_records_create(writes)

    @sync_to_async
    def check():
        spent = dict(BudgetPeriod.objects.values_list("budget__tenant__slug", "spent_usd"))
        assert spent == {"acme": Decimal("0.90"), "globex": Decimal("0.40")}
        assert not BudgetPeriod.objects.exclude(reserved_usd=0).exists()
        assert not BudgetReservation.objects.exists()
        # 0.00 -> 0.90 crosses acme's 50 % and 80 % once each; globex's 0.40 crosses nothing.
        alerts = BudgetAlert.objects.order_by("budget__tenant__slug", "threshold")
        assert [(a.budget.tenant.slug, a.threshold) for a in alerts] == [("acme", 50), ("acme", 80)]
        assert sorted(alert_ids) == sorted(alert.pk for alert in alerts)
        assert transactions_of_records() == 1

    await check()
