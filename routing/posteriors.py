"""Posteriors of the best_rated strategy: how good each deployment of a route is, from feedback.

The beat (`routing.tasks.posteriors_refresh_task`, every minute, after the feedback rollups) reads
the feedback rollups' `deployment` dimension (`route_group/provider:served_model`) over
`POSTERIOR_WINDOW`, and stores per best_rated route group one `RoutePosteriors` row:

- a posterior of each deployment's quality: Beta(1 + thumbs up, 1 + thumbs down) when every rating
  of the route is a thumb; otherwise a Normal posterior of the mean of the ratings' 0..1 values
  (thumb up 1, down 0, score s -> (s - 1) / 4) or of the route's named metric;
- globally (every tenant's ratings together) and for each tenant with `min_ratings` ratings on
  the route; a tenant's own posteriors steer only its own requests;
- the expected cost per request of each deployment: its price at the route's mean prompt and
  completion tokens per request (usage rollups of the rules using the group);
- the first-choice shares of the strategy (`first_choice_shares`), which requests log as their
  propensity.

Web processes keep the rows in process (`posteriors_get`) and load them again when a newer
refresh committed (read at most once per `GATEWAY_CONFIG_CACHE_SECONDS`, like the configuration
generation). When the beat is late the last rows stay in use; their age is shown by route_explain.
"""

from __future__ import annotations

import math
import operator
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import reduce

from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from accounting.models import UsageRollup
from accounting.pricing import cost_compute
from feedback.models import FeedbackRollup
from kernel.config_cache import ConfigCache
from kernel.config_generation import Generation
from providers.selectors import Deployment, catalog_build
from routing.models import RouteGroup, RoutePosteriors, RoutingRule, Strategy
from routing.selectors import BestRatedSettings, group_config_build

# Feedback older than this does not count: a deployment's quality drifts with its model's versions.
POSTERIOR_WINDOW = timedelta(days=30)
GLOBAL = ""  # the scope of every tenant's ratings together
Z95 = 1.959963984540054
# The Normal posterior's prior: one pseudo-rating at the middle of the 0..1 scale, with the widest
# variance a 0..1 value can have; a metric's prior is its pooled mean and variance on the route.
RATING_PRIOR = (0.5, 0.25)


def target_name(deployment: Deployment) -> str:
    """What feedback is kept per: the provider and upstream model that served."""
    return f"{deployment.target.provider_name}:{deployment.target.upstream_model}"


# --- reading the rollups ----------------------------------------------------------------------------
@dataclass
class QualityStats:
    """Additive counts of one deployment's feedback: they sum across buckets and tenants."""

    n: int = 0
    up: int = 0
    down: int = 0
    total: float = 0.0
    sumsq: float = 0.0

    def add(self, other: QualityStats) -> None:
        self.n += other.n
        self.up += other.up
        self.down += other.down
        self.total += other.total
        self.sumsq += other.sumsq

    @property
    def thumbs_only(self) -> bool:
        return self.n == self.up + self.down and abs(self.total - self.up) < 1e-9


def feedback_stats_read(
    *, groups: dict[str, str], since: datetime
) -> tuple[dict[tuple[int, str, str], QualityStats], datetime | None]:
    """The feedback of each (tenant, route group, target) since `since`, from the additive fields
    of the feedback rollups' day rows (`groups`: route group -> metric name, "" for the ratings);
    and when the newest row read was computed. The one place that knows the rollups' shape."""
    if not groups:
        return {}, None
    rows = FeedbackRollup.objects.filter(
        reduce(operator.or_, (Q(value__startswith=f"{group}/") for group in groups)),
        granularity="day", dimension=FeedbackRollup.Dimension.DEPLOYMENT,
        bucket_start__gte=since.replace(hour=0, minute=0, second=0, microsecond=0),
    ).values_list("tenant_id", "value", "ratings", "thumbs_up", "thumbs_down", "rating_sum", "rating_sumsq",
                  "metrics", "computed_at")
    stats: dict[tuple[int, str, str], QualityStats] = defaultdict(QualityStats)
    newest = None
    for tenant_id, value, ratings, up, down, total, sumsq, metrics, computed_at in rows.iterator():
        group, _, target = value.partition("/")
        if group not in groups:
            continue
        newest = max(newest, computed_at) if newest else computed_at
        metric = groups[group]
        if metric:
            m = (metrics or {}).get(metric) or {}
            row = QualityStats(n=int(m.get("count", 0)), total=float(m.get("sum", 0.0)),
                               sumsq=float(m.get("sumsq", 0.0)))
        else:
            row = QualityStats(n=ratings, up=up, down=down, total=float(total), sumsq=float(sumsq))
        stats[(tenant_id, group, target)].add(row)
    return dict(stats), newest


def mean_tokens_read(*, rules: list[str], since: datetime) -> tuple[float, float] | None:
    """Mean prompt and completion tokens per request of the requests these rules routed."""
    rows = UsageRollup.objects.filter(
        granularity="day", dimension=UsageRollup.Dimension.ROUTE, value__in=rules,
        bucket_start__gte=since.replace(hour=0, minute=0, second=0, microsecond=0),
    ).values_list("requests", "errors", "prompt_tokens", "completion_tokens")
    requests = prompt = completion = 0
    for count, errors, p, c in rows:
        requests += count - errors
        prompt += p
        completion += c
    return (prompt / requests, completion / requests) if requests > 0 else None


# --- posteriors ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Posterior:
    """A deployment's quality: Beta(a, b), or Normal(mean a, sd b); `n` ratings behind it."""

    kind: str
    a: float
    b: float
    n: int

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b) if self.kind == "beta" else self.a

    @property
    def sd(self) -> float:
        if self.kind == "beta":
            total = self.a + self.b
            return math.sqrt(self.a * self.b / (total * total * (total + 1)))
        return self.b

    def interval(self) -> tuple[float, float]:
        """About 95% (normal approximation; a Beta's is clipped to 0..1)."""
        low, high = self.mean - Z95 * self.sd, self.mean + Z95 * self.sd
        return (max(low, 0.0), min(high, 1.0)) if self.kind == "beta" else (low, high)

    def sample(self, rng: random.Random) -> float:
        return rng.betavariate(self.a, self.b) if self.kind == "beta" else rng.gauss(self.a, self.b)

    def as_list(self) -> list:
        return [self.kind, self.a, self.b, self.n]


def posterior_make(stats: QualityStats, *, beta: bool, prior: tuple[float, float]) -> Posterior:
    if beta:
        return Posterior("beta", 1.0 + stats.up, 1.0 + stats.down, stats.n)
    prior_mean, prior_variance = prior
    if stats.n == 0:
        return Posterior("normal", prior_mean, math.sqrt(prior_variance), 0)
    spread = max(stats.sumsq - stats.total * stats.total / stats.n, 0.0)
    variance = (spread + prior_variance) / stats.n
    return Posterior("normal", (stats.total + prior_mean) / (stats.n + 1), math.sqrt(variance / (stats.n + 1)),
                     stats.n)


def first_choice_shares(
    arms: list[tuple[str, Posterior, float]], *, lam: float, min_share: float
) -> dict[str, float]:
    """The probability that best_rated puts each arm (key, posterior, cost) first: the floor
    (`min_share`, at most an equal split) plus the rest times the chance that the arm's draw of
    `quality - lam * cost` is the highest of all the arms' draws.

    That chance is the integral over s of arm i's density at s times every other arm's
    probability of scoring below s, computed on a grid of `GRID` points over the scores' range
    (deterministic; exact to about 1e-3, where a Monte Carlo estimate of the same accuracy would
    cost a million draws)."""
    if not arms:
        return {}
    floor = min(min_share, 1.0 / len(arms))
    wins = _win_chances([(posterior, lam * cost) for _, posterior, cost in arms])
    return {key: floor + (1.0 - floor * len(arms)) * win for (key, _, _), win in zip(arms, wins)}


GRID = 2048


def _win_chances(scored: list[tuple[Posterior, float]]) -> list[float]:
    if len(scored) == 1:
        return [1.0]
    low = min(_support(p)[0] - shift for p, shift in scored)
    high = max(_support(p)[1] - shift for p, shift in scored)
    step = (high - low) / GRID
    points = [low + (g + 0.5) * step for g in range(GRID)]
    masses = []
    for posterior, shift in scored:
        density = [_density(posterior, s + shift) for s in points]
        total = sum(density) or 1.0
        masses.append([d / total for d in density])
    below = []  # each arm's chance of scoring below each grid point (half of the point's own mass)
    for mass in masses:
        running, cdf = 0.0, []
        for m in mass:
            cdf.append(running + m / 2)
            running += m
        below.append(cdf)
    wins = []
    for i, mass in enumerate(masses):
        others = [below[j] for j in range(len(masses)) if j != i]
        win = 0.0
        for g, m in enumerate(mass):
            if m:
                product = m
                for cdf in others:
                    product *= cdf[g]
                win += product
        wins.append(win)
    total = sum(wins) or 1.0
    return [w / total for w in wins]


def _support(posterior: Posterior) -> tuple[float, float]:
    """Where nearly all of the posterior lies (a Beta's within 0..1)."""
    low, high = posterior.mean - 9 * posterior.sd, posterior.mean + 9 * posterior.sd
    return (max(low, 0.0), min(high, 1.0)) if posterior.kind == "beta" else (low, high)


def _density(posterior: Posterior, x: float) -> float:
    if posterior.kind == "beta":
        if not 0.0 < x < 1.0:
            return 0.0
        a, b = posterior.a, posterior.b
        return math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x)
                        + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b))
    z = (x - posterior.a) / posterior.b
    return math.exp(-0.5 * z * z)


# --- the stored snapshot ------------------------------------------------------------------------------
@dataclass
class GroupPosteriors:
    """What best_rated knows of one route group (one `RoutePosteriors` row, parsed)."""

    group: str
    computed_at: float
    rollups_at: float | None
    ratings: int
    cost_known: bool
    costs: dict[str, float]  # target -> expected cost per request, USD
    scopes: dict[str, dict[str, Posterior]]  # GLOBAL or str(tenant id) -> target -> posterior
    settings: BestRatedSettings
    shares: dict[tuple, dict[str, float]] = field(default_factory=dict)  # memo, see `shares_for`

    def scope_for(self, tenant_id: int) -> str:
        return str(tenant_id) if str(tenant_id) in self.scopes else GLOBAL

    def posterior(self, scope: str, target: str) -> Posterior:
        found = self.scopes[scope].get(target)
        if found is not None:
            return found
        beta = any(p.kind == "beta" for p in self.scopes[GLOBAL].values())
        return posterior_make(QualityStats(), beta=beta, prior=RATING_PRIOR)

    def shares_for(self, scope: str, deployments: list[Deployment], settings: BestRatedSettings) -> dict[str, float]:
        """First-choice shares of these deployments under these settings: stored by the refresh for
        the group's deployments, computed once per process for another set (a hint excluded one)."""
        memo = (scope, tuple(d.key for d in deployments), settings.lam, settings.min_share)
        found = self.shares.get(memo)
        if found is None:
            arms = [(d.key, self.posterior(scope, target_name(d)), self.costs.get(target_name(d), 0.0))
                    for d in deployments]
            found = self.shares[memo] = first_choice_shares(arms, lam=settings.lam, min_share=settings.min_share)
        return found

    def data(self) -> dict:
        return {
            "ratings": self.ratings,
            "cost_known": self.cost_known,
            "costs": self.costs,
            "scopes": {scope: {t: p.as_list() for t, p in posts.items()} for scope, posts in self.scopes.items()},
            "settings": [self.settings.lam, self.settings.min_share, self.settings.min_ratings, self.settings.metric],
            "shares": [[list(memo), shares] for memo, shares in self.shares.items()],
        }

    @classmethod
    def from_row(cls, row: RoutePosteriors) -> GroupPosteriors:
        data = row.data
        lam, min_share, min_ratings, metric = data["settings"]
        return cls(
            group=row.group.name,
            computed_at=row.computed_at.timestamp(),
            rollups_at=row.rollups_at.timestamp() if row.rollups_at else None,
            ratings=data["ratings"],
            cost_known=data["cost_known"],
            costs=data["costs"],
            scopes={scope: {t: Posterior(*p) for t, p in posts.items()} for scope, posts in data["scopes"].items()},
            settings=BestRatedSettings(lam=lam, min_share=min_share, min_ratings=min_ratings, metric=metric),
            shares={(memo[0], tuple(memo[1]), memo[2], memo[3]): shares for memo, shares in data["shares"]},
        )


# --- the refresh (beat) -------------------------------------------------------------------------------
@transaction.atomic
def posteriors_refresh(*, now: datetime | None = None) -> int:
    """Recompute the posteriors of every best_rated route group from the rollups; idempotent."""
    now = now or timezone.now()
    since = now - POSTERIOR_WINDOW
    groups = list(RouteGroup.objects.filter(strategy=Strategy.BEST_RATED).prefetch_related("deployments"))
    stats, newest = feedback_stats_read(groups={g.name: g.best_rated_metric for g in groups}, since=since)
    catalog = catalog_build() if groups else None
    for group in groups:
        config = group_config_build(group, catalog)
        snapshot = _group_posteriors(config, stats=stats, since=since, now=now, rollups_at=newest)
        RoutePosteriors.objects.update_or_create(
            group=group, defaults={"data": snapshot.data(), "rollups_at": newest, "computed_at": now}
        )
    RoutePosteriors.objects.exclude(group__in=groups).delete()
    transaction.on_commit(posterior_generation.changed)
    return len(groups)


def group_posteriors_compute(config, *, now: datetime | None = None) -> GroupPosteriors:
    """One route group's posteriors now, under its config's settings (the replay's other lambda)."""
    now = now or timezone.now()
    since = now - POSTERIOR_WINDOW
    stats, newest = feedback_stats_read(groups={config.name: config.best_rated.metric}, since=since)
    return _group_posteriors(config, stats=stats, since=since, now=now, rollups_at=newest)


def _group_posteriors(config, *, stats, since: datetime, now: datetime, rollups_at) -> GroupPosteriors:
    settings = config.best_rated
    mine = {(tenant, target): s for (tenant, group, target), s in stats.items() if group == config.name}
    pooled: dict[str, QualityStats] = defaultdict(QualityStats)
    per_tenant: dict[int, dict[str, QualityStats]] = defaultdict(dict)
    for (tenant, target), s in mine.items():
        pooled[target].add(s)
        per_tenant[tenant][target] = s
    everything = QualityStats()
    for s in pooled.values():
        everything.add(s)
    beta = not settings.metric and everything.thumbs_only
    prior = RATING_PRIOR
    if settings.metric and everything.n:
        mean = everything.total / everything.n
        prior = (mean, max(everything.sumsq / everything.n - mean * mean, 1e-6))
    scopes = {GLOBAL: {t: posterior_make(s, beta=beta, prior=prior) for t, s in pooled.items()}}
    for tenant, targets in per_tenant.items():
        if sum(s.n for s in targets.values()) >= settings.min_ratings:
            scopes[str(tenant)] = {t: posterior_make(s, beta=beta, prior=prior) for t, s in targets.items()}
    rules = list(RoutingRule.objects.filter(group__name=config.name).values_list("name", flat=True))
    tokens = mean_tokens_read(rules=rules, since=since)
    costs = {}
    for deployment in config.deployments:
        price = deployment.price_at(now.timestamp())
        prompt, completion = tokens or (0, 0)
        costs[target_name(deployment)] = float(
            cost_compute(price=price, prompt_tokens=round(prompt), completion_tokens=round(completion))
        )
    snapshot = GroupPosteriors(
        group=config.name, computed_at=now.timestamp(), rollups_at=rollups_at.timestamp() if rollups_at else None,
        ratings=everything.n, cost_known=tokens is not None, costs=costs, scopes=scopes, settings=settings,
    )
    if snapshot.ratings:
        for scope in scopes:
            snapshot.shares_for(scope, list(config.deployments), settings)
    return snapshot


# --- in process ---------------------------------------------------------------------------------------
def _version_read() -> int | None:
    newest = RoutePosteriors.objects.aggregate(newest=Max("computed_at"))["newest"]
    return int(newest.timestamp() * 1_000_000) if newest else None


# Its own generation: a refresh every minute must not make every configuration cache load again.
posterior_generation = Generation(read=_version_read)
_cache: ConfigCache[dict[str, GroupPosteriors]] = ConfigCache("route posteriors", generations=posterior_generation)


def posteriors_load() -> dict[str, GroupPosteriors]:
    return {row.group.name: GroupPosteriors.from_row(row) for row in RoutePosteriors.objects.select_related("group")}


async def posteriors_get(group: str) -> GroupPosteriors | None:
    """The last posteriors of a route group in this process (None: never computed)."""
    return (await _cache.get("all", posteriors_load)).get(group)


def posteriors_age(snapshot: GroupPosteriors) -> float:
    return max(time.time() - snapshot.computed_at, 0.0)
