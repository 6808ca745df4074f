"""Budgets: periods, reservation, settlement with the UsageRecord, alerts, repair."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.core import mail
from django.db import IntegrityError, connection

from accounting.alerts import budget_alert_send
from accounting.budgets import (
    BudgetExceeded,
    _budgets_load,
    budget_recompute,
    budget_reserve as budget_reserve_async,
    period_end,
    period_start,
    reservations_release_stale,
)
from accounting.models import (
    Budget,
    BudgetAlert,
    BudgetPeriod,
    BudgetReservation,
    UsageRecord,
)
from accounting.services import api_key_create, tenant_create, usage_record_create

# Committed data: the money statements run on the event loop's own connections.
pytestmark = pytest.mark.django_db(transaction=True)
budget_reserve = async_to_sync(budget_reserve_async)

NOW = datetime(2026, 11, 18, 15, 30, tzinfo=dt_timezone.utc)  # a Wednesday


@pytest.fixture
def tenant():
    return tenant_create(slug="acme")


def limits(tenant, key=None):
    return _budgets_load(tenant.pk, key.pk if key else 0)


@pytest.fixture
def run_on_commit():
    """Alerts are returned once their statement has committed."""

    def run(function, *args, **kwargs):
        return function(*args, **kwargs)

    return run


def commit(tenant, *, cost: str, reservation=None, key=None, when=NOW, alerts=None):
    fields = {
        "tenant_id": tenant.pk, "api_key_id": key.pk if key else None, "endpoint": "chat.completions",
        "status": "success", "cost_usd": Decimal(cost), "created_at": when,
        "request_id": uuid.UUID(reservation.request_id) if reservation else uuid.uuid4(),
    }
    record_id, alert_ids = async_to_sync(usage_record_create)(
        fields=fields, budgets=limits(tenant, key), reservation=reservation,
    )
    if alerts is not None:
        alerts.extend(alert_ids)
    return record_id


@pytest.mark.parametrize(
    "period, start, end",
    [
        ("daily", datetime(2026, 11, 18, tzinfo=dt_timezone.utc), datetime(2026, 11, 19, tzinfo=dt_timezone.utc)),
        ("weekly", datetime(2026, 11, 16, tzinfo=dt_timezone.utc), datetime(2026, 11, 23, tzinfo=dt_timezone.utc)),
        ("monthly", datetime(2026, 11, 1, tzinfo=dt_timezone.utc), datetime(2026, 12, 1, tzinfo=dt_timezone.utc)),
    ],
)
def test_periods_start_and_end_on_their_own(period, start, end):
    assert period_start(period, NOW) == start
    assert period_end(period, start) == end
    assert period_end("total", period_start("total", NOW)) is None


def test_december_rolls_into_january():
    start = period_start("monthly", datetime(2026, 12, 31, 23, 0, tzinfo=dt_timezone.utc))
    assert period_end("monthly", start) == datetime(2027, 1, 1, tzinfo=dt_timezone.utc)


def test_reserve_refuses_past_a_hard_budget_with_a_clear_error(tenant):
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1.00"), period="monthly", hard=True)
    budgets = limits(tenant)
    first = budget_reserve(budgets=budgets, request_id=str(uuid.uuid4()), estimate=Decimal("0.60"), now=NOW)
    assert first is not None
    with pytest.raises(BudgetExceeded) as refused:
        budget_reserve(budgets=budgets, request_id=str(uuid.uuid4()), estimate=Decimal("0.60"), now=NOW)
    body = refused.value.as_body()["error"]
    assert refused.value.status == 429 and body["code"] == "budget_exceeded"
    assert body["budget"]["limit_usd"] == "1.00" and body["budget"]["spent_usd"] == "0.000000"
    assert body["budget"]["reserved_usd"] == "0.600000" and body["budget"]["left_usd"] == "0.400000"
    assert body["budget"]["resets_at"] == "2026-12-01T00:00:00+00:00"
    # Nothing is spent: the first request's reservation stands in the way until it settles.
    assert refused.value.headers["retry-after"] == "1"
    period = BudgetPeriod.objects.get()
    assert period.reserved_usd == Decimal("0.60") and period.spent_usd == 0
    assert BudgetReservation.objects.count() == 1  # the refused one held nothing


def test_settlement_releases_the_reservation_and_adds_the_real_cost(tenant):
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1.00"), period="monthly", hard=True)
    reservation = budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.60"), now=NOW)
    commit(tenant, cost="0.25", reservation=reservation)
    period = BudgetPeriod.objects.get()
    assert period.reserved_usd == 0 and period.spent_usd == Decimal("0.25")
    assert not BudgetReservation.objects.exists()
    assert UsageRecord.objects.get().cost_usd == Decimal("0.25")
    # Room again for what the estimate held back.
    assert budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.70"), now=NOW)


def test_a_periods_first_request_creates_its_row_and_holds_on_it(tenant):
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1.00"), period="monthly", hard=True)
    budgets = limits(tenant)
    request_id = str(uuid.uuid4())
    reservation = budget_reserve(budgets=budgets, request_id=request_id, estimate=Decimal("0.60"), now=NOW)
    period = BudgetPeriod.objects.get()
    assert period.period_start == period_start("monthly", NOW)
    assert reservation.period_ids == (period.pk,) and period.reserved_usd == Decimal("0.60")
    assert BudgetReservation.objects.get(request_id=request_id).amount_usd == Decimal("0.60")
    with pytest.raises(BudgetExceeded):  # past the limit: nothing held, the figures in the error
        budget_reserve(budgets=budgets, request_id=str(uuid.uuid4()), estimate=Decimal("0.41"), now=NOW)
    assert BudgetPeriod.objects.get().reserved_usd == Decimal("0.60")
    assert BudgetReservation.objects.count() == 1


def test_a_deleted_period_row_is_created_again(tenant):
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1.00"), period="monthly", hard=True)
    budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.60"), now=NOW)
    BudgetPeriod.objects.all().delete()  # an operator's reset: its reservations go with it
    reservation = budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.60"), now=NOW)
    assert reservation.period_ids == (BudgetPeriod.objects.get().pk,)
    assert BudgetPeriod.objects.get().reserved_usd == Decimal("0.60")


def test_several_hard_budgets_are_held_all_or_nothing(tenant):
    key, _ = api_key_create(tenant=tenant, name="small")
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1.00"), period="monthly", hard=True)
    Budget.objects.create(tenant=tenant, api_key=key, amount_usd=Decimal("0.50"), period="daily", hard=True)
    budgets = limits(tenant, key)
    held = budget_reserve(budgets=budgets, request_id=str(uuid.uuid4()), estimate=Decimal("0.30"), now=NOW)
    assert len(held.period_ids) == 2
    with pytest.raises(BudgetExceeded) as refused:  # fits the tenant's $1, not the key's $0.50
        budget_reserve(budgets=budgets, request_id=str(uuid.uuid4()), estimate=Decimal("0.30"), now=NOW)
    assert refused.value.details["scope"] == "api_key" and refused.value.details["reserved_usd"] == "0.300000"
    assert sorted(BudgetPeriod.objects.values_list("reserved_usd", flat=True)) == [Decimal("0.30")] * 2
    assert BudgetReservation.objects.count() == 2  # the first request's two; the refused one held nothing
    commit(tenant, cost="0.10", reservation=held, key=key)
    assert sorted(BudgetPeriod.objects.values_list("spent_usd", "reserved_usd")) == [(Decimal("0.10"), 0)] * 2


def test_a_settlement_retried_releases_nothing_twice(tenant):
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1.00"), period="monthly", hard=True, alert_thresholds=[50])
    reservation = budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.60"), now=NOW)
    commit(tenant, cost="0.25", reservation=reservation)
    with pytest.raises(IntegrityError):  # the same record again: its request id is written
        commit(tenant, cost="0.25", reservation=reservation)
    period = BudgetPeriod.objects.get()
    assert period.reserved_usd == 0 and period.spent_usd == Decimal("0.25")
    assert not BudgetAlert.objects.exists()


def test_soft_budgets_are_not_enforced_but_tracked(tenant):
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("0.10"), period="daily", hard=False)
    assert budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("5"), now=NOW) is None
    commit(tenant, cost="0.50")
    assert BudgetPeriod.objects.get().spent_usd == Decimal("0.50")


def test_key_budget_applies_only_to_that_key(tenant):
    key, _ = api_key_create(tenant=tenant, name="small")
    other, _ = api_key_create(tenant=tenant, name="big")
    Budget.objects.create(tenant=tenant, api_key=key, amount_usd=Decimal("0.01"), period="daily", hard=True)
    with pytest.raises(BudgetExceeded) as refused:
        budget_reserve(budgets=limits(tenant, key), request_id=str(uuid.uuid4()), estimate=Decimal("0.02"), now=NOW)
    assert refused.value.details["scope"] == "api_key"
    assert budget_reserve(budgets=limits(tenant, other), request_id=str(uuid.uuid4()), estimate=Decimal("0.02"), now=NOW) is None


def test_alerts_fire_once_per_threshold_per_period(tenant, run_on_commit):
    Budget.objects.create(
        tenant=tenant, amount_usd=Decimal("1.00"), period="daily", hard=False, alert_thresholds=[50, 80, 100],
    )
    raised: list[int] = []
    run_on_commit(commit, tenant, cost="0.40", alerts=raised)
    assert raised == []
    run_on_commit(commit, tenant, cost="0.45", alerts=raised)  # 85%: crosses 50 and 80 at once
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [50, 80]
    run_on_commit(commit, tenant, cost="0.01", alerts=raised)
    run_on_commit(commit, tenant, cost="0.50", alerts=raised)  # 136%
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [50, 80, 100]
    assert len(raised) == 3
    run_on_commit(commit, tenant, cost="0.60", when=NOW + timedelta(days=1), alerts=raised)  # a new day, 60%
    assert BudgetAlert.objects.filter(threshold=50).count() == 2


def test_alert_delivery_by_webhook_and_email_is_recorded(tenant, settings, httpserver_url, run_on_commit):
    url, received = httpserver_url
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    Budget.objects.create(
        tenant=tenant, amount_usd=Decimal("1.00"), period="monthly", hard=True,
        alert_thresholds=[50], alert_webhook=url, alert_email="ops@example.com",
    )
    raised: list[int] = []
    run_on_commit(commit, tenant, cost="0.75", alerts=raised)
    alert = budget_alert_send(alert_id=raised[0])
    assert alert.webhook_status == "sent: HTTP 200" and alert.email_status == "sent"
    assert received[0]["tenant"] == "acme" and received[0]["threshold_percent"] == 50
    assert "acme reached 50%" in mail.outbox[0].subject
    budget_alert_send(alert_id=raised[0])  # sending again does not repeat delivered channels
    assert len(received) == 1 and len(mail.outbox) == 1


def test_failed_webhook_is_recorded_not_raised(tenant, run_on_commit):
    Budget.objects.create(
        tenant=tenant, amount_usd=Decimal("1"), period="monthly", alert_thresholds=[10],
        alert_webhook="http://127.0.0.1:1/hook",
    )
    raised: list[int] = []
    run_on_commit(commit, tenant, cost="0.5", alerts=raised)
    assert budget_alert_send(alert_id=raised[0]).webhook_status.startswith("failed")


def test_spend_is_recomputable_from_usage_records(tenant):
    budget = Budget.objects.create(tenant=tenant, amount_usd=Decimal("10"), period="monthly")
    for cost in ("0.5", "0.25", "1.0"):
        commit(tenant, cost=cost, when=datetime.now(dt_timezone.utc))
    BudgetPeriod.objects.update(spent_usd=Decimal("99"))  # drifted
    assert budget_recompute(budget=budget).spent_usd == Decimal("1.75")


def test_stale_reservations_are_released(tenant):
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1"), period="monthly", hard=True)
    budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.9"))
    BudgetReservation.objects.update(created_at=datetime.now(dt_timezone.utc) - timedelta(hours=1))
    assert reservations_release_stale() == 1
    assert BudgetPeriod.objects.get().reserved_usd == 0


async def _reserve_many(budgets, estimates):
    return await asyncio.gather(*(
        budget_reserve_async(budgets=budgets, request_id=str(uuid.uuid4()), estimate=Decimal(estimate), now=NOW)
        for estimate in estimates
    ), return_exceptions=True)


def test_holds_that_arrive_together_go_out_as_one_statement(tenant):
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("10.00"), period="monthly", hard=True)
    budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.10"), now=NOW)

    held = async_to_sync(_reserve_many)(limits(tenant), ["0.50"] * 10)

    assert all(reservation.amount == Decimal("0.50") for reservation in held)
    period = BudgetPeriod.objects.get()
    assert period.reserved_usd == Decimal("5.10") and BudgetReservation.objects.count() == 11
    # The ten waited for one another: their reservation rows share one transaction.
    if connection.vendor == "postgresql":
        assert transactions_of_reservations(held) == 1


def test_holds_that_do_not_fit_together_are_held_or_refused_each_on_its_own(tenant):
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1.00"), period="monthly", hard=True)
    budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.10"), now=NOW)

    outcomes = async_to_sync(_reserve_many)(limits(tenant), ["0.40", "0.40", "0.40", "0.05"])

    # 0.10 + 0.40 + 0.40 fit; the third 0.40 does not; the 0.05 after it does.
    assert [type(outcome).__name__ for outcome in outcomes] == ["Reservation", "Reservation", "BudgetExceeded", "Reservation"]
    assert outcomes[2].details["reserved_usd"] == "0.900000" and outcomes[2].details["spent_usd"] == "0.000000"
    assert BudgetPeriod.objects.get().reserved_usd == Decimal("0.95")
    assert BudgetReservation.objects.count() == 4


def transactions_of_reservations(reservations) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(DISTINCT xmin::text) FROM {BudgetReservation._meta.db_table} WHERE request_id = ANY(%s::uuid[])",
            [[reservation.request_id for reservation in reservations]],
        )
        return cursor.fetchone()[0]


def test_a_budget_created_mid_period_counts_the_periods_spend_before_it(tenant):
    commit(tenant, cost="0.30", when=NOW - timedelta(days=2))  # this month, before the budget
    commit(tenant, cost="5.00", when=NOW - timedelta(days=40))  # last month: not this period's
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1.00"), period="monthly", hard=True)
    reservation = budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.50"), now=NOW)
    period = BudgetPeriod.objects.get()
    assert period.spent_usd == Decimal("0.30") and period.reserved_usd == Decimal("0.50")
    with pytest.raises(BudgetExceeded) as refused:  # 0.30 + 0.50 + 0.30 > 1.00
        budget_reserve(budgets=limits(tenant), request_id=str(uuid.uuid4()), estimate=Decimal("0.30"), now=NOW)
    assert refused.value.details["spent_usd"] == "0.300000"
    commit(tenant, cost="0.20", reservation=reservation)
    assert BudgetPeriod.objects.get().spent_usd == Decimal("0.50")


def test_a_soft_budgets_first_settlement_counts_the_periods_spend_before_it(tenant):
    key, _ = api_key_create(tenant=tenant, name="k")
    commit(tenant, cost="0.25", when=NOW - timedelta(hours=3))  # the tenant's, not the key's
    commit(tenant, cost="0.10", when=NOW - timedelta(hours=2), key=key)
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("1.00"), period="daily", hard=False)
    Budget.objects.create(tenant=tenant, api_key=key, amount_usd=Decimal("1.00"), period="daily", hard=False)
    commit(tenant, cost="0.05", key=key)
    spent = dict(BudgetPeriod.objects.values_list("budget__api_key_id", "spent_usd"))
    assert spent == {None: Decimal("0.40"), key.pk: Decimal("0.15")}


def _exceeded(amount: str, period: str, *, spent: str, reserved: str = "0", estimate: str, basis=None, resets_at=None):
    from accounting.budgets import BudgetLimit

    budget = BudgetLimit(budget_id=1, api_key_id=None, amount_usd=Decimal(amount), period=period, hard=True, thresholds=())
    resets_at = resets_at or period_end(period, period_start(period, datetime.now(dt_timezone.utc)))
    return BudgetExceeded(budget=budget, spent=Decimal(spent), reserved=Decimal(reserved), estimate=Decimal(estimate),
                          basis=basis, resets_at=resets_at)


def test_a_refusal_says_what_the_request_may_cost_and_how_to_fit():
    from accounting.budgets import CostBasis

    basis = CostBasis(model="gpt-4o", prompt_tokens=12, output_tokens=16384, choices=1, input_price=Decimal("2.50"),
                      output_price=Decimal("10.00"), cap_source="the model's output limit, as the request sets no max_tokens")
    refused = _exceeded("0.05", "daily", spent="0.00007", estimate="0.16387", basis=basis)
    message = refused.message
    assert message.startswith("This request may cost up to $0.163870 (16,384 output tokens (the model's output limit")
    assert "x $10.00/M + 12 prompt tokens x $2.50/M on gpt-4o" in message
    assert "more than the $0.049930 left in the tenant's daily budget of $0.05 ($0.000070 spent" in message
    # (0.04993 - 12 x 2.5e-6) / 1e-5 = 4990 tokens
    assert message.endswith("Set max_tokens to 4,990 or less to fit what is left.")
    assert refused.details["max_cost_basis"]["output_tokens"] == 16384
    # Waiting for the reset would not help a request dearer than the whole budget: no Retry-After.
    assert "retry-after" not in refused.headers


def test_retry_after_only_where_waiting_helps():
    in_flight = _exceeded("1.00", "monthly", spent="0.10", reserved="0.80", estimate="0.20")
    assert in_flight.headers["retry-after"] == "1"
    soon = datetime.now(dt_timezone.utc) + timedelta(minutes=10)  # a daily budget near midnight
    spent = _exceeded("1.00", "daily", spent="0.90", estimate="0.20", resets_at=soon)
    assert 590 <= int(spent.headers["retry-after"]) <= 600
    assert "Wait for the reset" in spent.message
    later = _exceeded("1.00", "monthly", spent="0.90", estimate="0.20",
                      resets_at=datetime.now(dt_timezone.utc) + timedelta(days=12))
    assert "retry-after" not in later.headers and later.details["resets_at"]
    never = _exceeded("1.00", "total", spent="0.90", estimate="0.20")
    assert "retry-after" not in never.headers and "a total budget never resets" in never.message
