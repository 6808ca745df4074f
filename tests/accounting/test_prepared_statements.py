"""The hot path's statements are prepared on PostgreSQL by psycopg's `prepare_threshold` on the
event loop's connections (kernel/db_async.py) and, once warm, run on a generic plan: the
budget reservation and the record with its settlement."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.utils import timezone

from accounting.budgets import _budgets_load, budget_reserve
from accounting.models import Budget, BudgetPeriod, UsageRecord
from accounting.services import RecordWrite, tenant_create, usage_records_create
from kernel import db_async
from tests.accounting.test_record_statement import every_field

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("statements are prepared on PostgreSQL only")


async def prepared() -> dict[str, tuple[int, int]]:
    """The loop's connection's prepared statements: their text's start -> (generic, custom plans).
    One statement at a time: the pool hands out the connection it was given back last."""
    rows = await db_async.statement("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements", [])
    return {" ".join(statement.split()): (generic, custom) for statement, generic, custom in rows}


def plans(statements: dict, start: str) -> tuple[int, int]:
    [found] = [plans for text, plans in statements.items() if text.startswith(start)]
    return found


@sync_to_async
def budgeted():
    tenant = tenant_create(slug=f"t{uuid.uuid4().hex[:8]}")
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("100"), period="monthly", hard=True, alert_thresholds=[50])
    return tenant, _budgets_load(tenant.pk, 0)


async def test_the_reservation_and_the_record_are_prepared_and_planned_once():
    tenant, budgets = await budgeted()
    for _ in range(16):  # as the hot path does it: a reservation, then the record
        request_id = uuid.uuid4()
        reservation = await budget_reserve(budgets=budgets, request_id=str(request_id), estimate=Decimal("0.10"))
        await usage_records_create([RecordWrite(
            fields=every_field(tenant, request_id, "0.01", created_at=timezone.now()),
            budgets=budgets, reservation=reservation)])

    statements = await prepared()
    reserve = plans(statements, "WITH want AS ( SELECT * FROM UNNEST")
    record = plans(statements, "WITH inserted AS (INSERT INTO")
    # psycopg prepares a statement text after its fifth run: the later runs use it (plans kept).
    assert sum(reserve) >= 10 and sum(record) >= 10, statements
    assert await UsageRecord.objects.acount() == 16
    period = await BudgetPeriod.objects.aget()
    assert period.spent_usd == Decimal("0.16") and period.reserved_usd == 0
