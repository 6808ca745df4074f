"""A request's UsageRecord and its budget settlement (accounting.services.usage_records_create,
accounting.statements): one statement on PostgreSQL, written as the ORM writes it, whatever the
group's records, budgets and period rows."""

from __future__ import annotations

import uuid
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.forms.models import model_to_dict

from accounting.budgets import _budgets_load, budget_reserve
from accounting.models import Budget, BudgetAlert, BudgetPeriod, BudgetReservation, UsageContent, UsageRecord
from accounting.services import RecordWrite, api_key_create, tenant_create, usage_records_create
from providers.models import Provider

NOW = datetime(2026, 11, 18, 15, 30, tzinfo=dt_timezone.utc)

pytestmark = pytest.mark.django_db(transaction=True)  # the money statements see committed data


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement record is PostgreSQL's")


create = async_to_sync(usage_records_create)


def commit(*, fields: dict, budgets=(), reservation=None) -> tuple[int, list[int]]:
    [record_id], alert_ids = create([RecordWrite(fields=fields, budgets=budgets, reservation=reservation)])
    return record_id, alert_ids


def transactions_of(*querysets) -> int:
    """How many transactions wrote these rows (their `xmin`)."""
    ids = set()
    for queryset in querysets:
        ids |= {row.xmin for row in queryset.model.objects.raw(
            f"SELECT id, xmin::text AS xmin FROM {queryset.model._meta.db_table} WHERE id = ANY(%s)",
            [list(queryset.values_list("pk", flat=True))])}
    return len(ids)


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
        "prompt_tokens": 12, "completion_tokens": 34, "usage_estimated": True, "prompt_tokens_estimated": True,
        "completion_tokens_estimated": True, "cost_usd": Decimal(cost),
        "latency_ms": 56, "ttft_ms": 7, "stream": True, "status": "success", "http_status": 200,
        "error_class": "", "attempts": [{"provider": "fake", "status": 200, "ms": 5, "note": "é\u2028"}],
        "end_user": "user-1", "cached_tokens": 3, "task": "summarise", "tags": ["a", "b"], "route": "r",
        "route_group": "g", "experiment": "e", "variant": "v", "conversation_id": "c-1", "cache": "miss",
        "saved_cost_usd": Decimal("0.00000001"), "units": Decimal("2.000"), "unit_kind": "image",
        "routing_strategy": "weighted", "routing_propensity": 0.5, "reserved_usd": Decimal("0.50000000"),
    }


def reserve(budgets) -> tuple[uuid.UUID, object]:
    request_id = uuid.uuid4()
    return request_id, async_to_sync(budget_reserve)(
        budgets=budgets, request_id=str(request_id), estimate=Decimal("0.50"), now=NOW)


def test_a_record_and_its_settlement_are_one_statement():
    tenant, budgets = budgeted()
    reserve(budgets)  # another request's reservation stays
    request_id, reservation = reserve(budgets)

    record_id, _ = commit(fields=every_field(tenant, request_id, "0.25"), budgets=budgets, reservation=reservation)

    assert UsageRecord.objects.get(request_id=request_id).pk == record_id
    period = BudgetPeriod.objects.get()
    assert period.spent_usd == Decimal("0.25") and period.reserved_usd == Decimal("0.50")  # the other one's
    assert not BudgetReservation.objects.filter(request_id=request_id).exists()
    # The record and the spend it justifies committed together.
    assert transactions_of(UsageRecord.objects.all(), BudgetPeriod.objects.all()) == 1


def test_the_statement_writes_every_field_as_the_orm_does():
    tenant, budgets = budgeted()
    by_statement, _ = commit(fields=every_field(tenant, uuid.uuid4(), "0.25"), budgets=budgets)
    by_orm = UsageRecord.objects.create(**every_field(tenant, uuid.uuid4(), "0.25"))

    def stored(pk):
        return {k: v for k, v in model_to_dict(UsageRecord.objects.get(pk=pk)).items() if k not in ("id", "request_id")}

    assert stored(by_statement) == stored(by_orm.pk)
    assert UsageRecord.objects.get(pk=by_statement).attempts[0]["note"] == "é\u2028"
    assert BudgetPeriod.objects.get().spent_usd == Decimal("0.25")


def test_defaults_fill_the_fields_not_given():
    tenant = tenant_create(slug=f"t{uuid.uuid4().hex[:8]}")
    request_id = uuid.uuid4()
    record_id, _ = commit(fields={"request_id": request_id, "tenant_id": tenant.pk, "endpoint": "chat.completions",
                                  "status": "success"})
    record = UsageRecord.objects.get(pk=record_id)
    assert record.request_id == request_id and record.cost_usd == 0 and record.tags == [] and record.created_at


def test_a_group_is_written_row_for_row_as_the_orm_writes_it():
    """Several records in one statement: each returned id is its own record's, and every stored
    value is what Django's bulk_create stores for the same fields."""
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

    writes = [RecordWrite(fields=fields_of(variant), budgets=budgets) for variant in variants]
    by_statement, _ = create(writes)
    by_orm = UsageRecord.objects.bulk_create([UsageRecord(**fields_of(variant)) for variant in variants])

    def stored(pk, request_id):
        row = UsageRecord.objects.filter(pk=pk).values().get()
        assert row["request_id"] == request_id  # the id returned is this record's
        return {k: v for k, v in row.items() if k not in ("id", "request_id")}

    assert [stored(pk, write.fields["request_id"]) for pk, write in zip(by_statement, writes)] == [
        stored(record.pk, record.request_id) for record in by_orm]
    assert stored(by_statement[1], writes[1].fields["request_id"])["cost_usd"] == Decimal("0.12345679")
    # The spend is the records' costs as stored (the statement's numeric rounds as the column does).
    assert BudgetPeriod.objects.get().spent_usd == sum(
        UsageRecord.objects.filter(pk__in=by_statement).values_list("cost_usd", flat=True), Decimal("0"))


def test_kept_content_is_written_with_its_record():
    tenant, budgets = budgeted()
    request_id, reservation = reserve(budgets)
    fields = every_field(tenant, request_id, "0.25") | {"content": {"messages": [{"role": "user", "content": "hé"}],
                                                                      "completion": "answer"}}
    record_id, _ = commit(fields=fields, budgets=budgets, reservation=reservation)

    content = UsageContent.objects.get()
    assert content.usage_record_id == record_id and content.tenant_id == tenant.pk
    assert content.messages == [{"role": "user", "content": "hé"}] and content.completion == "answer"
    assert content.created_at == NOW
    assert BudgetPeriod.objects.get().spent_usd == Decimal("0.25") and not BudgetReservation.objects.exists()


def test_a_period_row_deleted_meanwhile_is_created_again_and_loses_nothing():
    tenant, budgets = budgeted()
    request_id, reservation = reserve(budgets)
    BudgetPeriod.objects.all().delete()  # an operator's reset: its reservations go with it

    commit(fields=every_field(tenant, request_id, "0.25"), budgets=budgets, reservation=reservation)

    assert UsageRecord.objects.filter(request_id=request_id).count() == 1
    period = BudgetPeriod.objects.get()  # created again, with the spend
    assert period.spent_usd == Decimal("0.25") and period.reserved_usd == 0


def test_the_statement_raises_each_alert_line_it_crosses_once():
    tenant, budgets = budgeted(thresholds=[5, 10, 50])  # $0.50, $1.00, $5.00 of $10
    raised: list[int] = []

    def settle(cost: str) -> None:
        request_id, reservation = reserve(budgets)
        raised.extend(commit(fields=every_field(tenant, request_id, cost), budgets=budgets, reservation=reservation)[1])

    settle("0.40")
    assert raised == []
    settle("0.70")  # $1.10: crosses 5 % and 10 % at once
    assert sorted(BudgetAlert.objects.filter(pk__in=raised).values_list("threshold", flat=True)) == [5, 10]
    alert = BudgetAlert.objects.get(threshold=10)
    assert alert.spent_usd == Decimal("1.10") and alert.budget_id == budgets[0].budget_id
    settle("0.10")
    assert len(raised) == 2 and BudgetAlert.objects.count() == 2


def test_records_on_several_period_rows_are_one_statement_too():
    alerting, alerting_budgets = budgeted(thresholds=[1])
    plain, plain_budgets = budgeted()
    writes = [
        RecordWrite(fields=every_field(alerting, uuid.uuid4(), "0.25"), budgets=alerting_budgets),
        RecordWrite(fields=every_field(plain, uuid.uuid4(), "0.25"), budgets=plain_budgets),
    ]

    _, raised = create(writes)

    assert UsageRecord.objects.count() == 2
    assert sorted(BudgetPeriod.objects.values_list("spent_usd", flat=True)) == [Decimal("0.25")] * 2
    assert list(BudgetAlert.objects.values_list("threshold", flat=True)) == [1] and len(raised) == 1
    assert transactions_of(UsageRecord.objects.all(), BudgetPeriod.objects.all(), BudgetAlert.objects.all()) == 1


def test_a_group_with_a_tenant_without_budgets_spends_only_on_the_budgeted_ones():
    budgeted_tenant, budgets = budgeted()
    unbudgeted = tenant_create(slug=f"t{uuid.uuid4().hex[:8]}")
    request_id, reservation = reserve(budgets)
    writes = [
        RecordWrite(fields=every_field(unbudgeted, uuid.uuid4(), "0.70")),
        RecordWrite(fields=every_field(budgeted_tenant, request_id, "0.25"), budgets=budgets, reservation=reservation),
    ]

    create(writes)

    assert UsageRecord.objects.count() == 2
    period = BudgetPeriod.objects.get()
    assert period.spent_usd == Decimal("0.25") and period.reserved_usd == 0
