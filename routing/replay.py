"""Offline replay: what a strategy would have given on a route, estimated from the logged traffic.

Every routed request logs the probability with which its strategy chose the deployment that
served it (`UsageRecord.routing_propensity`). A strategy under test gives each logged request a
probability of choosing that same deployment; the ratio of the two weighs the request's outcome
(inverse propensity scoring). Two estimates of the mean rating and of the cost per request:

- IPS: the mean of weight x outcome over the logged requests; unbiased, noisy when weights are big;
- self-normalised IPS: the same sum divided by the sum of the weights; a little biased, far steadier.

Each comes with a 95% confidence interval (normal approximation; the delta method for the
self-normalised one) and the effective sample size (sum of weights)^2 / sum of squared weights:
how many requests the estimate is worth. Only requests with a logged propensity above 0 count
(requests served before propensities were logged, or by a deployment the strategy would never
have put first, cannot be weighed). The ratings are the 0..1 `rating_value` of the requests'
feedback (or the route's best_rated metric); the best_rated policy is the one of the posteriors
as they are now, so a replay of best_rated on the traffic it learned from is optimistic.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import timedelta

from django.db.models import Avg
from django.utils import timezone

from accounting.models import UsageRecord
from accounting.pricing import cost_compute
from feedback.models import Feedback, MetricValue
from providers.selectors import Deployment, catalog_build
from routing.models import RouteGroup, Strategy
from routing.posteriors import Z95, group_posteriors_compute, target_name
from routing.selectors import GroupConfig, group_config_build
from routing.strategies import by_priority

REPLAYABLE = (Strategy.FALLBACK, Strategy.ROUND_ROBIN, Strategy.WEIGHTED, Strategy.LOWEST_COST,
              Strategy.BEST_RATED)


class ReplayError(ValueError):
    """A replay that cannot be made (an unknown route, a strategy that depends on live state)."""


@dataclass(frozen=True)
class Estimate:
    mean: float | None
    low: float | None
    high: float | None
    n: int
    ess: float

    def text(self, fmt: str) -> str:
        if self.mean is None:
            return "no data"
        interval = "" if self.low is None else f" [{format(self.low, fmt)}, {format(self.high, fmt)}]"
        return f"{format(self.mean, fmt)}{interval} (n={self.n}, effective {self.ess:.1f})"


@dataclass(frozen=True)
class ReplayResult:
    group: str
    strategy: str
    lam: float
    days: int
    logged: int  # requests with a propensity
    unweighable: int  # requests without one
    rating_ips: Estimate
    rating_snips: Estimate
    cost_ips: Estimate
    cost_snips: Estimate
    logged_rating: float | None
    logged_cost: float | None
    policy: dict[str, float]  # the strategy's first-choice shares (globally), per target

    def lines(self) -> list[str]:
        logged_rating = "no ratings" if self.logged_rating is None else f"{self.logged_rating:.3f}"
        logged_cost = "-" if self.logged_cost is None else f"${self.logged_cost:.6f}"
        shares = ", ".join(f"{target} {share:.0%}" for target, share in sorted(self.policy.items()))
        return [
            f"route {self.group}: replay of {self.strategy} (lambda {self.lam:g}) on {self.logged} requests "
            f"of the last {self.days} days ({self.unweighable} without a propensity left out)",
            f"first choices of {self.strategy}: {shares or '-'}",
            f"logged: mean rating {logged_rating}, cost per request {logged_cost}",
            f"mean rating, IPS: {self.rating_ips.text('.3f')}",
            f"mean rating, self-normalised IPS: {self.rating_snips.text('.3f')}",
            f"cost per request, IPS: {self.cost_ips.text('.6f')}",
            f"cost per request, self-normalised IPS: {self.cost_snips.text('.6f')}",
        ]


def ips_estimate(pairs: list[tuple[float, float]]) -> Estimate:
    """Mean of weight x outcome, with a 95% interval and the effective sample size."""
    n = len(pairs)
    if n == 0:
        return Estimate(None, None, None, 0, 0.0)
    values = [w * r for w, r in pairs]
    mean = sum(values) / n
    ess = _ess(pairs)
    if n == 1:
        return Estimate(mean, None, None, n, ess)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, ess)


def snips_estimate(pairs: list[tuple[float, float]]) -> Estimate:
    """Sum of weight x outcome over the sum of weights; its interval by the delta method."""
    total = sum(w for w, _ in pairs)
    if not pairs or total <= 0:
        return Estimate(None, None, None, len(pairs), 0.0)
    mean = sum(w * r for w, r in pairs) / total
    half = Z95 * math.sqrt(sum((w * (r - mean)) ** 2 for w, r in pairs)) / total
    return Estimate(mean, mean - half, mean + half, len(pairs), _ess(pairs))


def _ess(pairs: list[tuple[float, float]]) -> float:
    squares = sum(w * w for w, _ in pairs)
    return sum(w for w, _ in pairs) ** 2 / squares if squares else 0.0


def route_group_find(name: str) -> RouteGroup:
    """A route by its group's name, or by the name of a rule that uses it (they are the same for
    routes made by import_config)."""
    group = RouteGroup.objects.filter(name=name).first() or RouteGroup.objects.filter(rules__name=name).first()
    if group is None:
        raise ReplayError(f"No route named '{name}'.")
    return group


def routing_replay(
    *, group: RouteGroup, days: int = 7, strategy: str | None = None, lam: float | None = None, now=None
) -> ReplayResult:
    now = now or timezone.now()
    strategy = strategy or group.strategy
    if strategy not in REPLAYABLE:
        raise ReplayError(
            f"'{strategy}' cannot be replayed: it chooses by live latency or load, which the records do not "
            f"keep. Replayable: {', '.join(REPLAYABLE)}."
        )
    if days < 1:
        raise ReplayError("--days must be at least 1.")
    config = group_config_build(group, catalog_build())
    if lam is not None:
        if lam < 0:
            raise ReplayError("--lambda must be 0 or more.")
        config = replace(config, best_rated=replace(config.best_rated, lam=lam))
    policy = _policy(config, strategy)
    records = UsageRecord.objects.filter(
        route_group=group.name, created_at__gte=now - timedelta(days=days), status=UsageRecord.Status.SUCCESS
    )
    logged = list(records.filter(routing_propensity__gt=0).values(
        "id", "tenant_id", "provider_name", "served_model", "prompt_tokens", "completion_tokens", "cost_usd",
        "routing_propensity",
    ))
    rewards = _rewards([r["id"] for r in logged], metric=config.best_rated.metric)
    rated, costs = [], []
    for record in logged:
        target = f"{record['provider_name']}:{record['served_model']}"
        weight = policy(record).get(target, 0.0) / record["routing_propensity"]
        costs.append((weight, float(record["cost_usd"])))
        if record["id"] in rewards:
            rated.append((weight, rewards[record["id"]]))
    return ReplayResult(
        group=group.name, strategy=strategy, lam=config.best_rated.lam, days=days, logged=len(logged),
        unweighable=records.count() - len(logged),
        rating_ips=ips_estimate(rated), rating_snips=snips_estimate(rated),
        cost_ips=ips_estimate(costs), cost_snips=snips_estimate(costs),
        logged_rating=sum(r for _, r in rated) / len(rated) if rated else None,
        logged_cost=sum(c for _, c in costs) / len(costs) if costs else None,
        policy=policy({"tenant_id": 0, "prompt_tokens": 0, "completion_tokens": 0}),
    )


def _rewards(record_ids: list[int], *, metric: str) -> dict[int, float]:
    """Each rated request's outcome: the mean of its ratings' 0..1 values, or of the metric's values."""
    if metric:
        rows = MetricValue.objects.filter(usage_record_id__in=record_ids, metric__name=metric)
        rows = rows.values("usage_record_id").annotate(value=Avg("value"))
    else:
        rows = Feedback.objects.filter(usage_record_id__in=record_ids, rating_value__isnull=False)
        rows = rows.values("usage_record_id").annotate(value=Avg("rating_value"))
    return {row["usage_record_id"]: row["value"] for row in rows}


def _policy(config: GroupConfig, strategy: str):
    """The strategy's first-choice probability per target, for one logged request."""
    deployments = list(config.deployments)
    if not deployments:
        return lambda record: {}
    if strategy == Strategy.FALLBACK:
        fixed = _by_target({by_priority(deployments)[0].key: 1.0}, deployments)
        return lambda record: fixed
    if strategy == Strategy.ROUND_ROBIN:
        fixed = _by_target({d.key: 1.0 / len(deployments) for d in deployments}, deployments)
        return lambda record: fixed
    if strategy == Strategy.WEIGHTED:
        total = sum(d.weight for d in deployments)
        shares = {d.key: d.weight / total for d in deployments} if total else {by_priority(deployments)[0].key: 1.0}
        fixed = _by_target(shares, deployments)
        return lambda record: fixed
    if strategy == Strategy.LOWEST_COST:
        return lambda record: _cheapest(deployments, record)
    return _best_rated_policy(config, deployments)


def _cheapest(deployments: list[Deployment], record: dict) -> dict[str, float]:
    now = time.time()  # today's prices: the ones lowest_cost would use now

    def cost(d: Deployment):
        return cost_compute(price=d.price_at(now), prompt_tokens=record["prompt_tokens"],
                            completion_tokens=record["completion_tokens"])

    first = sorted(by_priority(deployments), key=cost)[0]
    return {target_name(first): 1.0}


def _best_rated_policy(config: GroupConfig, deployments: list[Deployment]):
    snapshot = group_posteriors_compute(config)
    if not snapshot.ratings:
        fixed = _by_target({by_priority(deployments)[0].key: 1.0}, deployments)
        return lambda record: fixed
    memo: dict[str, dict[str, float]] = {}

    def policy(record: dict) -> dict[str, float]:
        scope = snapshot.scope_for(record["tenant_id"])
        if scope not in memo:
            memo[scope] = _by_target(snapshot.shares_for(scope, deployments, config.best_rated), deployments)
        return memo[scope]

    return policy


def _by_target(shares: dict[str, float], deployments: list[Deployment]) -> dict[str, float]:
    by_target: dict[str, float] = defaultdict(float)
    for d in deployments:
        by_target[target_name(d)] += shares.get(d.key, 0.0)
    return dict(by_target)
