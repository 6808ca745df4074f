"""Budgets: reserve before the call, settle after it, alert at thresholds.

A hard budget is enforced by reservation. Before a request goes upstream, the most it could cost
(prompt tokens plus its output cap, at the dearest deployment it may use) is reserved on the
budget's current period, under a row lock (`FOR UPDATE`), and refused if spend plus
reservations plus this estimate would pass the amount. After the call the reservation is
released and the real cost added, in the same statement that writes the UsageRecord
(`accounting.services.usage_records_create`; the statements: `accounting.statements`). So
concurrent requests can overshoot a hard budget by no more than what was reserved and then cost
more than estimated (which a correct estimate makes nothing), and spend is always the sum of the
period's UsageRecords.

Soft budgets are not enforced; every budget raises its alerts once per period per threshold.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.db import transaction
from django.db.models import F, Q, Sum

from accounting.models import (
    Budget,
    BudgetPeriod,
    BudgetReservation,
    Period,
    UsageRecord,
)
from accounting.statements import Batched, Hold, dialect
from kernel.config_cache import ConfigCache
from kernel.errors import GatewayError

EPOCH = datetime(2000, 1, 1, tzinfo=dt_timezone.utc)


@dataclass(frozen=True)
class CostBasis:
    """How a request's worst-case cost (what a hard budget reserves) was computed, for a refusal
    to explain: `output_tokens` (the cap of each of `choices` answers) at `output_price`, plus
    `prompt_tokens` at `input_price` (USD per million tokens), on `model`, the dearest deployment
    the request may reach. `cap_source` says where the cap came from: "max_tokens" (the
    request's own), "the model's output limit", "what the context window leaves" or "the
    default output reserve". `calls` is 2 when a structured answer may need a repair call."""

    model: str
    prompt_tokens: int
    output_tokens: int
    choices: int
    input_price: Decimal
    output_price: Decimal
    cap_source: str
    calls: int = 1

    def text(self) -> str:
        prompt = f"{self.prompt_tokens:,} prompt tokens x {_per_million(self.input_price)}"
        if not self.output_tokens:
            return f"{prompt} on {self.model}"
        answers = f" x {self.choices} choices" if self.choices > 1 else ""
        repair = ", and a possible repair call for the structured answer" if self.calls > 1 else ""
        return (f"{self.output_tokens:,} output tokens ({self.cap_source}){answers} x {_per_million(self.output_price)}"
                f" + {prompt} on {self.model}{repair}")

    def max_tokens_fitting(self, left: Decimal) -> int:
        """The largest `max_tokens` whose worst case fits `left` (0: none does)."""
        if not self.output_price or self.calls > 1:
            return 0
        room = left - Decimal(self.prompt_tokens) * self.input_price / MILLION
        return max(int(room * MILLION / self.output_price / self.choices), 0)


MILLION = Decimal(1_000_000)


def _per_million(price: Decimal) -> str:
    """A price per million tokens as people write it: $0.60/M, $0.075/M, $10/M as $10.00/M."""
    places = max(2, -price.normalize().as_tuple().exponent)
    return f"${price:.{places}f}/M"
RETRY_AFTER_HORIZON = 3600  # seconds: a reset further away is no retry, however true


class BudgetExceeded(GatewayError):
    """A hard budget refused a request: the body says what the request may cost and why, what is
    left in which budget, and what to do about it. `Retry-After` is sent only where waiting can
    help: a second when the budget is taken by requests in flight (their reservations are released
    as they finish), and until the period's reset when spend is what stands in the way and the reset
    is near (`RETRY_AFTER_HORIZON`). A request that could not fit the whole budget, a spent total
    budget (which never resets) and a period that ends later get none: `resets_at` says when."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"
    error_class = "budget_exceeded"

    def __init__(self, *, budget: BudgetLimit, spent: Decimal, reserved: Decimal = Decimal("0"),
                 estimate: Decimal = Decimal("0"), basis: CostBasis | None = None,
                 resets_at: datetime | None = None) -> None:
        scope = "API key" if budget.api_key_id else "tenant"
        left = max(budget.amount_usd - spent - reserved, Decimal("0"))
        super().__init__(" ".join(part for part in (
            f"This request may cost up to ${estimate:.6f}" + (f" ({basis.text()})" if basis else "")
            + f", more than the ${left:.6f} left in the {scope}'s {budget.period} budget of"
            f" ${budget.amount_usd:.2f} (${spent:.6f} spent, ${reserved:.6f} reserved by requests in flight"
            + (f"; it resets at {resets_at.isoformat()})." if resets_at else ")."),
            self._fix(budget=budget, left=left, estimate=estimate, basis=basis, resets_at=resets_at),
        ) if part))
        self.details = {
            "scope": "api_key" if budget.api_key_id else "tenant",
            "period": budget.period,
            "limit_usd": f"{budget.amount_usd:.2f}",
            "spent_usd": str(spent.quantize(Decimal("0.000001"))),
            "reserved_usd": str(reserved.quantize(Decimal("0.000001"))),
            "left_usd": str(left.quantize(Decimal("0.000001"))),
            "request_max_cost_usd": str(estimate.quantize(Decimal("0.000001"))),
            "resets_at": resets_at.isoformat() if resets_at else None,
        }
        if basis is not None:
            self.details["max_cost_basis"] = {
                "model": basis.model, "prompt_tokens": basis.prompt_tokens, "output_tokens": basis.output_tokens,
                "choices": basis.choices, "input_usd_per_million": str(basis.input_price),
                "output_usd_per_million": str(basis.output_price), "output_cap": basis.cap_source,
            }
        wait = self._wait(budget=budget, spent=spent, estimate=estimate, resets_at=resets_at)
        if wait is not None:
            self.headers["retry-after"] = str(wait)

    @staticmethod
    def _fix(*, budget, left, estimate, basis, resets_at) -> str:
        fitting = basis.max_tokens_fitting(left) if basis is not None else 0
        if fitting:
            verb = "Lower" if basis.cap_source == "max_tokens" else "Set"
            return f"{verb} max_tokens to {fitting:,} or less to fit what is left."
        if estimate > budget.amount_usd:
            return "The request does not fit this budget even when nothing is spent: shorten it or raise the budget."
        if resets_at:
            return "Wait for the reset, or raise the budget."
        return "Raise the budget: a total budget never resets."

    @staticmethod
    def _wait(*, budget, spent, estimate, resets_at) -> int | None:
        """Seconds after which the request may fit, or None where waiting does not help."""
        if estimate > budget.amount_usd:
            return None
        if spent + estimate <= budget.amount_usd:
            return 1  # held by requests in flight, released as they finish
        wait = math.ceil((resets_at - _now()).total_seconds()) if resets_at else None
        if wait is not None and wait <= RETRY_AFTER_HORIZON:
            return max(1, wait)
        return None  # `resets_at` in the body says when; a client should not sleep until then

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
_cache: ConfigCache[tuple[BudgetLimit, ...]] = ConfigCache("budgets")


async def budgets_for(*, tenant_id: int, key_id: int) -> tuple[BudgetLimit, ...]:
    return await _cache.get((tenant_id, key_id), functools.partial(_budgets_load, tenant_id, key_id))


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
# A period row is where concurrent requests of a tenant meet, so its row lock is held as briefly
# as possible: the reservation and the settlement are each one statement in autocommit on
# PostgreSQL (`accounting.statements`), which take the rows in (budget, period start) order, so that
# two statements never wait on each other crosswise. The reservations that arrive while one is on
# the wire go out together (`statements.Batched`): all of them held, or none.
_ATTEMPTS = 3  # a reservation that found period rows missing creates them and tries again


async def budget_reserve(
    *, budgets: tuple[BudgetLimit, ...], request_id: str, estimate: Decimal, basis: CostBasis | None = None,
    now: datetime | None = None,
) -> Reservation | None:
    """Hold `estimate` on every hard budget's current period, or raise BudgetExceeded without
    holding anything (`basis`, how the estimate was computed, is for its message). A period's
    first request (or one whose row was deleted) creates its row."""
    hard = sorted((budget for budget in budgets if budget.hard), key=lambda budget: budget.budget_id)
    if not hard:
        return None
    now = now or _now()
    hold = Hold(request_id=request_id, estimate=estimate, want=tuple(
        (budget.budget_id, period_start(budget.period, now), budget.amount_usd) for budget in hard
    ))
    for _ in range(_ATTEMPTS):
        held, found = await _holds(hold)
        if held:
            return Reservation(request_id=request_id, amount=estimate,
                               period_ids=tuple(sorted(period_id for _, period_id, _, _ in found)))
        missing = [(budget_id, start) for (budget_id, start, _), (_, period_id, _, _) in zip(hold.want, found)
                   if period_id is None]
        if not missing:
            break
        await dialect().periods_create(missing)
    raise _refusal(hard, list(hold.want), found, estimate, basis)


async def _holds_run(holds: list[Hold]) -> list[tuple[bool, list]]:
    """One batch of holds: all held, or none; then, for a batch of several, each on its own (the
    ones that fit are held), so that each request is held or refused on its own estimate."""
    outcomes = await dialect().reserve(holds, _now())
    if len(holds) == 1 or all(held for held, _ in outcomes):
        return outcomes
    return [outcome for hold in holds for outcome in await dialect().reserve([hold], _now())]


_holds: Batched[Hold, tuple[bool, list]] = Batched(_holds_run)


def _refusal(hard: list[BudgetLimit], want: list, found: list, estimate: Decimal,
             basis: CostBasis | None) -> BudgetExceeded:
    """The refusal of the first budget that the estimate does not fit, with its figures."""
    chosen = None
    for budget, (_, start, _), (_, period_id, taken, reserved) in zip(hard, want, found):
        taken = taken if period_id is not None else Decimal("0")
        if taken + estimate > budget.amount_usd or period_id is None:
            chosen = budget, start, taken, reserved
            break
    if chosen is None:  # a race lost on SQLite
        (budget, (_, start, _), (_, _, taken, reserved)) = hard[0], want[0], found[0]
        chosen = budget, start, taken or Decimal("0"), reserved
    budget, start, taken, reserved = chosen
    reserved = reserved or Decimal("0")
    return BudgetExceeded(budget=budget, spent=taken - reserved, reserved=reserved, estimate=estimate,
                          basis=basis, resets_at=period_end(budget.period, start))


@dataclass(frozen=True)
class Settlement:
    """One request's part of a settlement: its budgets, its reservation, its real cost, its time."""

    budgets: tuple[BudgetLimit, ...]
    reservation: Reservation | None
    cost: Decimal
    now: datetime


def settlement_changes(
    settlements: list[Settlement],
) -> tuple[list[str], list[tuple[int, datetime, Decimal]], list[tuple[int, int, Decimal]]]:
    """What settling these requests changes: the request ids whose reservations are released;
    the spend per period row (budget id, period start, cost summed), in (budget, start) order; and
    the alert lines (budget id, threshold, amount) of the budgets spent on."""
    spend: dict[tuple[int, datetime], Decimal] = {}
    alerting: dict[int, BudgetLimit] = {}
    for item in settlements:
        if not item.cost:
            continue
        for budget in item.budgets:
            key = (budget.budget_id, period_start(budget.period, item.now))
            spend[key] = spend.get(key, Decimal("0")) + item.cost
            if budget.thresholds:
                alerting[budget.budget_id] = budget
    releases = [item.reservation.request_id for item in settlements if item.reservation is not None]
    lines = [
        (budget.budget_id, threshold, budget.amount_usd * threshold / 100)
        for budget in alerting.values() for threshold in budget.thresholds
    ]
    return releases, [(*key, cost) for key, cost in sorted(spend.items())], lines


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
