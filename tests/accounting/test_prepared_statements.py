"""The hot path's statements are prepared on PostgreSQL and, once warm, run on a generic plan
(gateway_site/prepared.py): the budget reservation and the record with its settlement."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from accounting.budgets import _budgets_load, budget_reserve
from accounting.models import Budget, BudgetPeriod, UsageRecord
from accounting.services import RecordWrite, tenant_create, usage_records_commit
from tests.accounting.test_record_statement import every_field

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("statements are prepared on PostgreSQL only")


def prepared() -> dict[str, tuple[int, int]]:
    """This connection's prepared statements: their text's start -> (generic plans, custom plans)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        return {statement[:40]: (generic, custom) for statement, generic, custom in cursor.fetchall()}


def requests(count: int) -> None:
    """`count` requests' database work as the hot path does it: a reservation, then the record."""
    tenant = tenant_create(slug=f"t{uuid.uuid4().hex[:8]}")
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("100"), period="monthly", hard=True, alert_thresholds=[50])
    budgets = _budgets_load(tenant.pk, 0)
    for _ in range(count):
        request_id = uuid.uuid4()
        reservation = budget_reserve(budgets=budgets, request_id=str(request_id), estimate=Decimal("0.10"))
        usage_records_commit([RecordWrite(fields=every_field(tenant, request_id, "0.01", created_at=timezone.now()), budgets=budgets,
                                          reservation=reservation)])


def test_the_reservation_and_the_record_are_prepared_and_planned_once():
    requests(8)

    statements = prepared()
    reserve = statements["WITH hold AS (UPDATE accounting_budgetpe"]
    record = statements['WITH inserted AS (INSERT INTO "accountin']
    # PostgreSQL plans the first five runs for their values, then keeps the generic plan.
    assert reserve[0] >= 2 and record[0] >= 2, statements
    assert UsageRecord.objects.count() == 8
    period = BudgetPeriod.objects.get()
    assert period.spent_usd == Decimal("0.08") and period.reserved_usd == 0


def test_prepared_statements_can_be_turned_off_for_a_pooler(settings):
    settings.GATEWAY_DB_PREPARED_STATEMENTS = False
    connection.close()  # a new session: none prepared by an earlier test

    requests(2)

    assert prepared() == {}
    assert UsageRecord.objects.count() == 2
