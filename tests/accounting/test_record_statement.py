"""A request's UsageRecord and its budget settlement as one statement on PostgreSQL
(accounting.services.usage_records_commit, budgets.records_insert_settle), and the transaction
they fall back to when one statement cannot do it."""

from __future__ import annotations

import uuid
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from django.db import connection
from django.forms.models import model_to_dict

from accounting.budgets import Settlement, _budgets_load, budget_reserve
from accounting.models import Budget, BudgetAlert, BudgetPeriod, BudgetReservation, UsageRecord
from accounting.services import (
    RecordWrite, _records_commit, api_key_create, tenant_create, usage_record_commit, usage_records_commit,
)
from providers.models import Provider

NOW = datetime(2026, 11, 18, 15, 30, tzinfo=dt_timezone.utc)


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement record is PostgreSQL's")


def budgeted(thresholds=()):
    tenant = tenant_create(slug=f"t{uuid.uuid4().hex[:8]}")
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("10.00"), period="monthly", hard=True,
                          alert_thresholds=list(thresholds))
    return tenant, _budgets_load(tenant.pk, 0)


def every_field(tenant, request_id: uuid.UUID, cost: str, *, created_at: datetime = NOW) -> dict:
    """A record with a value other than its default in every field that has one. A record whose
    budget was reserved at the current time (the event loop's hold, which takes no `now`) must be
    created at the current time too (`created_at=timezone.now()`): its settlement is to the period
    of `created_at`."""
    return {
        "request_id": request_id, "response_id": "chatcmpl-1", "created_at": created_at, "tenant_id": tenant.pk,
        "api_key_id": None, "endpoint": "chat.completions", "requested_model": "gpt-4o-mini",
        "provider_id": None, "provider_name": "fake", "served_model": "gpt-4o-mini-2024-07-18",
        "prompt_tokens": 12, "completion_tokens": 34, "usage_estimated": True, "cost_usd": Decimal(cost),
        "latency_ms": 56, "ttft_ms": 7, "stream": True, "status": "success", "http_status": 200,
        "error_class": "", "attempts": [{"provider": "fake", "status": 200, "ms": 5, "note": "é\u2028"}],
        "end_user": "user-1", "cached_tokens": 3, "task": "summarise", "tags": ["a", "b"], "route": "r",
        "route_group": "g", "experiment": "e", "variant": "v", "conversation_id": "c-1", "cache": "miss",
        "saved_cost_usd": Decimal("0.00000001"),
    }


def reserve(budgets) -> tuple[uuid.UUID, object]:
    request_id = uuid.uuid4()
    return request_id, budget_reserve(budgets=budgets, request_id=str(request_id), estimate=Decimal("0.50"), now=NOW)


@pytest.mark.django_db(transaction=True)
def test_a_record_and_its_settlement_are_one_statement(django_assert_num_queries):
    tenant, budgets = budgeted()
    reserve(budgets)  # the period row exists and its id is known
    request_id, reservation = reserve(budgets)

    with django_assert_num_queries(1):
        record = usage_record_commit(fields=every_field(tenant, request_id, "0.25"), budgets=budgets, reservation=reservation)

    assert UsageRecord.objects.get(request_id=request_id).pk == record.pk
    period = BudgetPeriod.objects.get()
    assert period.spent_usd == Decimal("0.25") and period.reserved_usd == Decimal("0.50")  # the other one's
    assert not BudgetReservation.objects.filter(request_id=request_id).exists()


@pytest.mark.django_db
def test_the_statement_writes_every_field_as_the_orm_does():
    tenant, budgets = budgeted()
    by_statement = usage_record_commit(fields=every_field(tenant, uuid.uuid4(), "0.25"), budgets=budgets)
    orm_fields = every_field(tenant, uuid.uuid4(), "0.25")
    [by_orm] = _records_commit(
        [UsageRecord(**orm_fields)], [None],
        [Settlement(budgets=budgets, reservation=None, cost=Decimal("0.25"), now=NOW)], None,
    )

    def stored(pk):
        return {k: v for k, v in model_to_dict(UsageRecord.objects.get(pk=pk)).items() if k not in ("id", "request_id")}

    assert stored(by_statement.pk) == stored(by_orm.pk)
    assert UsageRecord.objects.get(pk=by_statement.pk).attempts[0]["note"] == "é\u2028"
    assert BudgetPeriod.objects.get().spent_usd == Decimal("0.50")


@pytest.mark.django_db
def test_a_group_is_written_row_for_row_as_the_orm_writes_it():
    """Several records in one statement (one JSON array of rows): each returned id is its own
    record's, and every stored value is what Django's bulk_create stores for the same fields."""
    tenant, budgets = budgeted()
    key, _ = api_key_create(tenant=tenant)
    provider = Provider.objects.create(name=f"p{uuid.uuid4().hex[:8]}", type="openai", api_base="http://127.0.0.1:1/v1")
    variants = [
        {},
        {"api_key_id": key.pk, "provider_id": provider.pk, "ttft_ms": None, "cost_usd": Decimal("0.123456785"),
         "attempts": [], "tags": [], "end_user": "ünïcode \u2028 \"quoted\" \\ back", "status": "error",
         "http_status": 502, "error_class": "upstream_error", "created_at": datetime(2026, 11, 18, 15, 30, 0, 123456, tzinfo=dt_timezone.utc)},
        {"cost_usd": Decimal("1E-8"), "saved_cost_usd": Decimal("0"), "attempts": [{"nested": {"k": [1, 2.5, None, True]}}],
         "tags": ["x" * 100], "usage_estimated": False, "stream": False, "cache": ""},
    ]

    def fields_of(variant: dict) -> dict:
        return every_field(tenant, uuid.uuid4(), "0.25") | variant

    by_statement = usage_records_commit([RecordWrite(fields=fields_of(variant), budgets=budgets) for variant in variants])
    by_orm = UsageRecord.objects.bulk_create([UsageRecord(**fields_of(variant)) for variant in variants])

    def stored(record):
        row = UsageRecord.objects.filter(pk=record.pk).values().get()
        assert row["request_id"] == record.request_id  # the id returned is this record's
        return {k: v for k, v in row.items() if k not in ("id", "request_id")}

    assert [stored(record) for record in by_statement] == [stored(record) for record in by_orm]
    assert stored(by_statement[1])["cost_usd"] == Decimal("0.12345679")
    assert BudgetPeriod.objects.get().spent_usd == Decimal("0.25") + Decimal("0.12345679") + Decimal("0.00000001")


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "in a transaction"])
def test_a_period_row_deleted_meanwhile_falls_back_and_loses_nothing(request, autocommit):
    request.getfixturevalue("transactional_db" if autocommit else "db")
    tenant, budgets = budgeted()
    request_id, reservation = reserve(budgets)
    BudgetPeriod.objects.all().delete()  # an operator's reset: its reservations go with it

    usage_record_commit(fields=every_field(tenant, request_id, "0.25"), budgets=budgets, reservation=reservation)

    assert UsageRecord.objects.filter(request_id=request_id).count() == 1
    period = BudgetPeriod.objects.get()  # found or created again, with the spend
    assert period.spent_usd == Decimal("0.25") and period.reserved_usd == 0


@pytest.mark.django_db(transaction=True)
def test_the_statement_raises_each_alert_line_it_crosses_once(django_assert_num_queries):
    tenant, budgets = budgeted(thresholds=[5, 10, 50])  # $0.50, $1.00, $5.00 of $10
    raised: list[int] = []

    def commit(cost: str) -> None:
        request_id, reservation = reserve(budgets)
        with django_assert_num_queries(1):
            usage_record_commit(fields=every_field(tenant, request_id, cost), budgets=budgets,
                                reservation=reservation, on_alert=raised.append)

    reserve(budgets)  # the period row exists
    commit("0.40")
    assert raised == []
    commit("0.70")  # $1.10: crosses 5 % and 10 % at once
    assert sorted(BudgetAlert.objects.filter(pk__in=raised).values_list("threshold", flat=True)) == [5, 10]
    alert = BudgetAlert.objects.get(threshold=10)
    assert alert.spent_usd == Decimal("1.10") and alert.budget_id == budgets[0].budget_id
    commit("0.10")
    assert len(raised) == 2 and BudgetAlert.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_records_on_several_period_rows_take_the_transaction():
    alerting, alerting_budgets = budgeted(thresholds=[1])
    plain, plain_budgets = budgeted()
    writes = [
        RecordWrite(fields=every_field(alerting, uuid.uuid4(), "0.25"), budgets=alerting_budgets),
        RecordWrite(fields=every_field(plain, uuid.uuid4(), "0.25"), budgets=plain_budgets),
    ]
    raised: list[int] = []

    usage_records_commit(writes, on_alert=raised.append)

    assert UsageRecord.objects.count() == 2
    assert sorted(BudgetPeriod.objects.values_list("spent_usd", flat=True)) == [Decimal("0.25")] * 2
    assert list(BudgetAlert.objects.values_list("threshold", flat=True)) == [1] and len(raised) == 1


@pytest.mark.django_db(transaction=True)
def test_a_group_with_a_tenant_without_budgets_spends_only_on_the_budgeted_ones():
    budgeted_tenant, budgets = budgeted()
    unbudgeted = tenant_create(slug=f"t{uuid.uuid4().hex[:8]}")
    request_id, reservation = reserve(budgets)
    writes = [
        RecordWrite(fields=every_field(unbudgeted, uuid.uuid4(), "0.70")),
        RecordWrite(fields=every_field(budgeted_tenant, request_id, "0.25"), budgets=budgets, reservation=reservation),
    ]

    usage_records_commit(writes)

    assert UsageRecord.objects.count() == 2
    period = BudgetPeriod.objects.get()
    assert period.spent_usd == Decimal("0.25") and period.reserved_usd == 0
