"""Budgets: reserve before the call, settle after it, alert at thresholds.

A hard budget is enforced by reservation. Before a request goes upstream, the most it could cost
(prompt tokens plus its output cap, at the dearest deployment it may use) is reserved on the
budget's current period, under a row lock (`select_for_update`), and refused if spend plus
reservations plus this estimate would pass the amount. After the call the reservation is
released and the real cost added, in the same transaction that writes the UsageRecord. So
concurrent requests can overshoot a hard budget by no more than what was reserved and then cost
more than estimated (which a correct estimate makes nothing), and spend is always the sum of the
period's UsageRecords.

Soft budgets are not enforced; every budget raises its alerts once per period per threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Sum

from accounting.models import (
    Budget,
    BudgetAlert,
    BudgetPeriod,
    BudgetReservation,
    Period,
    UsageRecord,
)
from gateway_site.errors import GatewayError

EPOCH = datetime(2000, 1, 1, tzinfo=dt_timezone.utc)


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"
    error_class = "budget_exceeded"

    def __init__(self, *, budget: BudgetLimit, spent: Decimal, resets_at: datetime | None) -> None:
        scope = "API key" if budget.api_key_id else "tenant"
        when = f"; it resets at {resets_at.isoformat()}" if resets_at else ""
        super().__init__(
            f"The {scope}'s {budget.period} budget is exhausted: ${spent:.6f} spent or reserved "
            f"of ${budget.amount_usd:.2f}{when}."
        )
        self.details = {
            "scope": "api_key" if budget.api_key_id else "tenant",
            "period": budget.period,
            "spent_usd": str(spent.quantize(Decimal("0.000001"))),
            "limit_usd": f"{budget.amount_usd:.2f}",
            "resets_at": resets_at.isoformat() if resets_at else None,
        }
        if resets_at:
            self.headers["retry-after"] = str(max(1, int((resets_at - _now()).total_seconds())))

    def as_body(self) -> dict:
        body = super().as_body()
        body["error"]["budget"] = self.details
        return body


@dataclass(frozen=True)
class BudgetLimit:
    """A budget's definition, as cached for the hot path."""

    budget_id: int
    api_key_id: int | None
    amount_usd: Decimal
    period: str
    hard: bool
    thresholds: tuple[int, ...]


@dataclass(frozen=True)
class Reservation:
    request_id: str
    amount: Decimal
    period_ids: tuple[int, ...]


def _now() -> datetime:
    return datetime.now(dt_timezone.utc)


def period_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(dt_timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Period.DAILY:
        return day
    if period == Period.WEEKLY:
        return day - timedelta(days=day.weekday())
    if period == Period.MONTHLY:
        return day.replace(day=1)
    return EPOCH


def period_end(period: str, start: datetime) -> datetime | None:
    if period == Period.DAILY:
        return start + timedelta(days=1)
    if period == Period.WEEKLY:
        return start + timedelta(days=7)
    if period == Period.MONTHLY:
        return (start + timedelta(days=32)).replace(day=1)
    return None


# --- definitions, cached ------------------------------------------------------------------------
_cache: dict[tuple[int, int], tuple[float, tuple[BudgetLimit, ...]]] = {}


def budget_cache_clear() -> None:
    _cache.clear()


async def budgets_for(*, tenant_id: int, key_id: int) -> tuple[BudgetLimit, ...]:
    cached = _cache.get((tenant_id, key_id))
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    limits = await sync_to_async(_budgets_load)(tenant_id, key_id)
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[(tenant_id, key_id)] = (time.monotonic() + settings.GATEWAY_CONFIG_CACHE_SECONDS, limits)
    return limits


def _budgets_load(tenant_id: int, key_id: int) -> tuple[BudgetLimit, ...]:
    rows = Budget.objects.filter(enabled=True, tenant_id=tenant_id).filter(
        Q(api_key__isnull=True) | Q(api_key_id=key_id)
    ).order_by("pk")
    return tuple(
        BudgetLimit(
            budget_id=row.pk,
            api_key_id=row.api_key_id,
            amount_usd=row.amount_usd,
            period=row.period,
            hard=row.hard,
            thresholds=tuple(sorted(int(t) for t in row.alert_thresholds or ())),
        )
        for row in rows
    )


# --- reserve and settle ---------------------------------------------------------------------------
def _periods_locked(budgets: tuple[BudgetLimit, ...], now: datetime) -> list[BudgetPeriod]:
    """The budgets' current period rows, created if new, locked in id order (no deadlocks)."""
    ids = []
    for budget in budgets:
        period, _ = BudgetPeriod.objects.get_or_create(
            budget_id=budget.budget_id, period_start=period_start(budget.period, now)
        )
        ids.append(period.pk)
    return list(BudgetPeriod.objects.select_for_update().filter(pk__in=ids).order_by("pk"))


@transaction.atomic
def budget_reserve(
    *, budgets: tuple[BudgetLimit, ...], request_id: str, estimate: Decimal, now: datetime | None = None
) -> Reservation | None:
    """Hold `estimate` on every hard budget, or raise BudgetExceeded without holding anything."""
    hard = tuple(budget for budget in budgets if budget.hard)
    if not hard:
        return None
    now = now or _now()
    periods = _periods_locked(hard, now)
    by_budget = {period.budget_id: period for period in periods}
    for budget in hard:
        period = by_budget[budget.budget_id]
        committed = period.spent_usd + period.reserved_usd
        if committed + estimate > budget.amount_usd:
            raise BudgetExceeded(
                budget=budget, spent=committed, resets_at=period_end(budget.period, period.period_start)
            )
    BudgetPeriod.objects.filter(pk__in=[p.pk for p in periods]).update(
        reserved_usd=F("reserved_usd") + estimate
    )
    BudgetReservation.objects.bulk_create(
        BudgetReservation(budget_period=period, request_id=request_id, amount_usd=estimate) for period in periods
    )
    return Reservation(request_id=request_id, amount=estimate, period_ids=tuple(p.pk for p in periods))


def budget_settle(
    *, budgets: tuple[BudgetLimit, ...], reservation: Reservation | None, cost: Decimal, now: datetime
) -> list[int]:
    """Release the reservation and add the real cost; returns ids of alerts newly raised.

    Runs inside the caller's transaction (the one writing the UsageRecord).
    """
    if reservation is not None:
        released = BudgetReservation.objects.filter(
            request_id=reservation.request_id, budget_period_id__in=reservation.period_ids
        ).delete()[0]
        if released:
            BudgetPeriod.objects.filter(pk__in=reservation.period_ids).update(
                reserved_usd=F("reserved_usd") - reservation.amount
            )
    if not budgets or not cost:
        return []
    periods = _periods_locked(budgets, now)
    BudgetPeriod.objects.filter(pk__in=[p.pk for p in periods]).update(spent_usd=F("spent_usd") + cost)
    return _alerts_raise(budgets, periods, cost)


def _alerts_raise(budgets: tuple[BudgetLimit, ...], periods: list[BudgetPeriod], cost: Decimal) -> list[int]:
    by_budget = {period.budget_id: period for period in periods}
    raised = []
    for budget in budgets:
        period = by_budget[budget.budget_id]
        before, after = period.spent_usd, period.spent_usd + cost  # the lock makes `before` exact
        for threshold in budget.thresholds:
            line = budget.amount_usd * threshold / 100
            if before < line <= after:
                alert, created = BudgetAlert.objects.get_or_create(
                    budget_id=budget.budget_id, period_start=period.period_start, threshold=threshold,
                    defaults={"spent_usd": after},
                )
                if created:
                    raised.append(alert.pk)
    return raised


@transaction.atomic
def budget_recompute(*, budget: Budget, now: datetime | None = None) -> BudgetPeriod:
    """Set the current period's spend to the sum of its UsageRecords (repair, audits)."""
    now = now or _now()
    start = period_start(budget.period, now)
    records = UsageRecord.objects.filter(tenant_id=budget.tenant_id, created_at__gte=start)
    if budget.api_key_id:
        records = records.filter(api_key_id=budget.api_key_id)
    spent = records.aggregate(total=Sum("cost_usd"))["total"] or Decimal("0")
    period, _ = BudgetPeriod.objects.select_for_update().get_or_create(budget=budget, period_start=start)
    period.spent_usd = spent
    period.save(update_fields=["spent_usd"])
    return period


@transaction.atomic
def reservations_release_stale(*, older_than: timedelta = timedelta(minutes=15)) -> int:
    """Release reservations of requests that never settled (a process died mid-request)."""
    stale = BudgetReservation.objects.select_for_update().filter(created_at__lt=_now() - older_than)
    count = 0
    for reservation in stale:
        BudgetPeriod.objects.filter(pk=reservation.budget_period_id).update(
            reserved_usd=F("reserved_usd") - reservation.amount_usd
        )
        reservation.delete()
        count += 1
    return count
