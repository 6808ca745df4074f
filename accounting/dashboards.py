"""Reads for the dashboards: time series, breakdowns and budget burn-downs from UsageRollup.

Every number here comes from UsageRollup rows (filled by the rollup task) and, for budgets, from
the authoritative BudgetPeriod row; nothing reads UsageRecord. A range is read at one granularity
only (hourly rows for the last 24 hours, daily rows for 7 and 30 days), so the two never add up
twice.

Percentiles over several buckets (a range, a tenant's models) come from the rows' latency and
time-to-first-token sketches merged (`accounting.sketches`): within 1 % of the exact percentile of
the range's requests, however many buckets it spans.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.db.models import Q, QuerySet
from django.utils import timezone

from accounting.budgets import period_end, period_start
from accounting.models import (
    Budget,
    BudgetPeriod,
    Period,
    Tenant,
    TenantApiKey,
    UsageRollup,
)
from accounting.sketches import sketch_merge, sketch_quantiles

Granularity = UsageRollup.Granularity
Dimension = UsageRollup.Dimension
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
OTHER = "other"


@dataclass(frozen=True)
class Window:
    """A range of whole buckets, [start, end), read at one granularity."""

    key: str
    granularity: str
    start: datetime
    end: datetime

    @property
    def step(self) -> timedelta:
        return HOUR if self.granularity == Granularity.HOUR else DAY

    @property
    def buckets(self) -> list[datetime]:
        count = int((self.end - self.start) / self.step)
        return [self.start + i * self.step for i in range(count)]


RANGES = {"24h": (Granularity.HOUR, 24), "7d": (Granularity.DAY, 7), "30d": (Granularity.DAY, 30)}
DEFAULT_RANGE = "7d"


def window_for(*, range_key: str, now: datetime | None = None) -> Window:
    """The window of a range key, ending with the bucket that holds `now` (UTC buckets)."""
    if range_key not in RANGES:
        range_key = DEFAULT_RANGE
    granularity, count = RANGES[range_key]
    now = (now or timezone.now()).astimezone(dt_timezone.utc)
    if granularity == Granularity.HOUR:
        end = now.replace(minute=0, second=0, microsecond=0) + HOUR
        return Window(range_key, granularity, end - count * HOUR, end)
    end = now.replace(hour=0, minute=0, second=0, microsecond=0) + DAY
    return Window(range_key, granularity, end - count * DAY, end)


# --- statistics of a set of rollup rows -----------------------------------------------------------
@dataclass
class Stats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal("0")
    cache_hits: int = 0
    saved_cost_usd: Decimal = Decimal("0")  # what answers served from the cache would have cost
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    ttft_p99_ms: float | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def cache_hit_rate(self) -> float | None:
        return self.cache_hits / self.requests if self.requests else None


SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd", "cache_hits", "saved_cost_usd")
_READ = (*SUMMED, "latency_sketch", "ttft_sketch")


def _stats_of(rows: list[dict]) -> Stats:
    """The sums of rollup rows, and their percentiles from their sketches merged."""
    stats = Stats(**{name: sum(row[name] for row in rows) for name in SUMMED})
    stats.cost_usd = sum((row["cost_usd"] for row in rows), Decimal("0"))
    stats.saved_cost_usd = sum((row["saved_cost_usd"] for row in rows), Decimal("0"))
    for prefix in ("latency", "ttft"):
        for name, value in sketch_quantiles(sketch_merge(row[f"{prefix}_sketch"] for row in rows)).items():
            setattr(stats, f"{prefix}_{name}_ms", value)
    return stats


def _stats_by(rows: QuerySet[UsageRollup], by: str) -> dict:
    """Stats per value of the field `by` (bucket, value, tenant)."""
    groups: dict = defaultdict(list)
    for row in rows.values(by, *_READ):
        groups[row[by]].append(row)
    return {key: _stats_of(members) for key, members in groups.items()}


def _rollups(*, window: Window, dimension: str, tenant: Tenant | None = None) -> QuerySet[UsageRollup]:
    rows = UsageRollup.objects.filter(
        granularity=window.granularity, dimension=dimension,
        bucket_start__gte=window.start, bucket_start__lt=window.end,
    )
    return rows.filter(tenant=tenant) if tenant is not None else rows


# --- one tenant -----------------------------------------------------------------------------------
def usage_totals(*, tenant: Tenant, window: Window) -> Stats:
    return _stats_of(list(_rollups(window=window, dimension=Dimension.TOTAL, tenant=tenant).values(*_READ)))


def usage_timeline(*, tenant: Tenant, window: Window) -> list[tuple[datetime, Stats]]:
    """One Stats per bucket of the window, empty where no rollup exists."""
    by_bucket = _stats_by(_rollups(window=window, dimension=Dimension.TOTAL, tenant=tenant), "bucket_start")
    return [(bucket, by_bucket.get(bucket, Stats())) for bucket in window.buckets]


@dataclass
class BreakdownRow:
    value: str
    label: str
    stats: Stats = field(default_factory=Stats)


def usage_breakdown(*, tenant: Tenant, window: Window, dimension: str) -> list[BreakdownRow]:
    """Totals per value of a dimension (model, API key, task, end user), dearest first."""
    by_value = _stats_by(_rollups(window=window, dimension=dimension, tenant=tenant), "value")
    labels = _key_labels(tenant) if dimension == Dimension.API_KEY else {}
    result = [
        BreakdownRow(value=value, label=_label(value, labels), stats=stats) for value, stats in by_value.items()
    ]
    result.sort(key=lambda r: (-r.stats.cost_usd, -r.stats.requests, r.label))
    return result


def _key_labels(tenant: Tenant) -> dict[str, str]:
    # Only this tenant's keys: a rollup naming another tenant's key id shows as a bare id.
    return {str(key.pk): f"{key.name} ({key.prefix}…)" for key in TenantApiKey.objects.filter(tenant=tenant)}


def _label(value: str, labels: dict[str, str]) -> str:
    if value in labels:
        return labels[value]
    return value or "(none)"


def cost_by_model_series(*, tenant: Tenant, window: Window, top: int = 6) -> dict[str, list[float]]:
    rows = _rollups(window=window, dimension=Dimension.MODEL, tenant=tenant).values_list(
        "bucket_start", "value", "cost_usd"
    )
    return _series_top(rows, window=window, top=top)


def _series_top(rows, *, window: Window, top: int) -> dict[str, list[float]]:
    """{name: cost per bucket} for the `top` dearest names; the rest summed as "other"."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    cells: dict[tuple[datetime, str], Decimal] = defaultdict(Decimal)
    for bucket, name, cost in rows:
        name = name or "(none)"
        totals[name] += cost
        cells[bucket, name] += cost
    keep = sorted(totals, key=lambda n: (-totals[n], n))[:top]
    series = {name: [0.0] * len(window.buckets) for name in keep}
    index = {bucket: i for i, bucket in enumerate(window.buckets)}
    for (bucket, name), cost in cells.items():
        if name not in series:
            name = OTHER
            series.setdefault(OTHER, [0.0] * len(index))
        series[name][index[bucket]] += float(cost)
    return series


# --- every tenant (operators) ---------------------------------------------------------------------
def tenant_comparison(*, window: Window) -> list[tuple[Tenant, Stats]]:
    by_tenant = _stats_by(_rollups(window=window, dimension=Dimension.TOTAL), "tenant")
    result = [(tenant, by_tenant.get(tenant.pk, Stats())) for tenant in Tenant.objects.all()]
    result.sort(key=lambda item: (-item[1].cost_usd, -item[1].requests, item[0].slug))
    return result


def cost_per_tenant_series(*, window: Window, top: int = 8) -> dict[str, list[float]]:
    rows = _rollups(window=window, dimension=Dimension.TOTAL).values_list("bucket_start", "tenant__slug", "cost_usd")
    return _series_top(rows, window=window, top=top)


# --- budgets --------------------------------------------------------------------------------------
@dataclass
class BurnDown:
    """A budget's current period: spend so far, and where a straight line from it ends."""

    budget: Budget
    scope: str
    now: datetime
    start: datetime
    end: datetime | None
    amount: Decimal
    spent: Decimal
    reserved: Decimal
    projected: Decimal | None
    exhausted_at: datetime | None
    points: list[datetime]
    remaining: list[float | None]
    projection: list[float | None]

    @property
    def positions(self) -> list[float]:
        """Each point's place on the time axis, 0 at the first point and 1 at the last."""
        first, span = self.points[0], (self.points[-1] - self.points[0]) or timedelta(seconds=1)
        return [(point - first) / span for point in self.points]

    @property
    def left(self) -> Decimal:
        return self.amount - self.spent

    @property
    def over_budget(self) -> bool:
        return self.projected is not None and self.projected > self.amount


def burn_projection(*, spent: Decimal, start: datetime, end: datetime | None, now: datetime) -> Decimal | None:
    """Spend at the period's end if it goes on at the average rate so far; None without an end."""
    if end is None:
        return None
    elapsed = min(now, end) - start
    if elapsed <= timedelta(0):
        return spent
    return spent * Decimal((end - start) / timedelta(seconds=1)) / Decimal(elapsed / timedelta(seconds=1))


def burn_exhaustion(
    *, spent: Decimal, amount: Decimal, start: datetime, end: datetime | None, now: datetime
) -> datetime | None:
    """When the amount runs out at the average rate so far: `now` if it already has, None if it
    will not within the period (or the budget has no period end)."""
    if spent >= amount:
        return now
    if end is None or spent <= 0 or now <= start:
        return None
    ratio = float(amount / spent)
    # Compared before it is added to a date: a tiny spend makes the ratio overflow any datetime.
    if ratio >= (end - start) / (now - start):
        return None
    return start + (now - start) * ratio


def budget_burndowns(
    *, tenant: Tenant, api_key: TenantApiKey | None = None, now: datetime | None = None
) -> list[BurnDown]:
    """The burn-down of every enabled budget of the tenant, or, for `api_key`, of every budget
    that applies to the key's requests (the tenant's and the key's own)."""
    now = (now or timezone.now()).astimezone(dt_timezone.utc)
    budgets = Budget.objects.filter(tenant=tenant, enabled=True).select_related("api_key")
    if api_key is not None:
        budgets = budgets.filter(Q(api_key__isnull=True) | Q(api_key=api_key))
    order = {p: i for i, p in enumerate(Period.values)}
    return [
        _burndown(budget, now)
        for budget in sorted(budgets, key=lambda b: (b.api_key_id is not None, order[b.period], b.pk))
    ]


def _burndown(budget: Budget, now: datetime) -> BurnDown:
    start = period_start(budget.period, now)
    end = period_end(budget.period, start)
    granularity, step = (Granularity.HOUR, HOUR) if budget.period == Period.DAILY else (Granularity.DAY, DAY)
    costs = list(
        _budget_rollups(budget)
        .filter(granularity=granularity, bucket_start__gte=start, bucket_start__lt=end or now + DAY)
        .order_by("bucket_start").values_list("bucket_start", "cost_usd")
    )
    period_row = BudgetPeriod.objects.filter(budget=budget, period_start=start).first()
    spent = period_row.spent_usd if period_row else sum((cost for t, cost in costs if t < now), Decimal("0"))
    amount = budget.amount_usd
    points = _grid(start if end else _total_chart_start(budget, now), end or now, step, now)

    def remaining(point: datetime) -> float | None:
        if point == now:  # the authoritative spend, which may be ahead of the rollups
            return float(amount - spent)
        return float(amount - sum((c for t, c in costs if t < point), Decimal("0"))) if point < now else None

    return BurnDown(
        budget=budget,
        scope=f"key {budget.api_key.name}" if budget.api_key_id else "tenant",
        now=now, start=start, end=end, amount=amount, spent=spent,
        reserved=period_row.reserved_usd if period_row else Decimal("0"),
        projected=burn_projection(spent=spent, start=start, end=end, now=now),
        exhausted_at=burn_exhaustion(spent=spent, amount=amount, start=start, end=end, now=now),
        points=points,
        remaining=[remaining(point) for point in points],
        projection=_projection_line(points, amount, spent, start, end, now),
    )


def _budget_rollups(budget: Budget) -> QuerySet[UsageRollup]:
    rows = UsageRollup.objects.filter(tenant_id=budget.tenant_id)
    if budget.api_key_id:
        return rows.filter(dimension=Dimension.API_KEY, value=str(budget.api_key_id))
    return rows.filter(dimension=Dimension.TOTAL)


def _total_chart_start(budget: Budget, now: datetime) -> datetime:
    # A budget without periods is drawn from its creation day, at most 60 days back.
    created = budget.created_at.astimezone(dt_timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(created, now.replace(hour=0, minute=0, second=0, microsecond=0) - 60 * DAY)


def _grid(start: datetime, end: datetime, step: timedelta, now: datetime) -> list[datetime]:
    """Points every `step` from start to end, with `now` among them when it falls inside."""
    points, point = [], start
    while point < end:
        points.append(point)
        point += step
    points.append(end)
    if start < now < end and now not in points:
        points.append(now)
    return sorted(points)


def _projection_line(points, amount, spent, start, end, now) -> list[float | None]:
    """Remaining budget on the straight line through (start, amount) and (now, amount - spent),
    from now to the period's end; None before now."""
    if end is None or now <= start:
        return [None] * len(points)
    rate = spent / Decimal((now - start) / timedelta(seconds=1))
    return [
        float(amount - rate * Decimal((point - start) / timedelta(seconds=1))) if point >= now else None
        for point in points
    ]
