"""Routing strategies: each orders a route group's deployments for one request.

The first deployment is the one tried first; the rest are the failover order. Circuit breakers
are applied afterwards, while attempting (`routing.attempts`). Each strategy also says how
likely each deployment was to come first (`Ranking.shares`): the propensity every request logs,
which the offline replay (`routing.replay`) weighs by. A deterministic strategy gives its first
choice 1.0; round-robin 1/n each; weighted each its weight's share; best_rated its posterior shares.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

from kernel.redis_client import RedisConnections, RedisFallback, shared_store
from providers.selectors import Deployment
from routing.health import health_store
from routing.models import Strategy
from routing.posteriors import GroupPosteriors, Posterior, posteriors_get, target_name
from routing.selectors import BestRatedSettings

# Requests in flight per deployment key, in this process (least_busy).
in_flight: Counter[str] = Counter()


def by_priority(deployments: list[Deployment]) -> list[Deployment]:
    return sorted(deployments, key=lambda d: (d.priority, d.model_id, d.key))


async def fallback(deployments: list[Deployment], **_) -> list[Deployment]:
    return by_priority(deployments)


async def round_robin(deployments: list[Deployment], *, group: str, **_) -> list[Deployment]:
    ordered = by_priority(deployments)
    turn = await _next_turn(group)
    start = turn % len(ordered)
    return ordered[start:] + ordered[:start]


async def weighted(deployments: list[Deployment], **_) -> list[Deployment]:
    """A weighted random order (Efraimidis-Spirakis): the first pick follows the weights."""
    keyed = [(random.random() ** (1.0 / max(d.weight, 1)) if d.weight else 0.0, d) for d in deployments]
    return [d for _, d in sorted(keyed, key=lambda item: item[0], reverse=True)]


async def lowest_cost(
    deployments: list[Deployment], *, prompt_tokens: int, completion_tokens: int, **_
) -> list[Deployment]:
    now = time.time()

    def cost(d: Deployment) -> Decimal:
        price = d.price_at(now)
        return price.input_per_million * prompt_tokens + price.output_per_million * completion_tokens

    return sorted(by_priority(deployments), key=cost)


async def lowest_latency(deployments: list[Deployment], **_) -> list[Deployment]:
    """Fastest first by recent latency; deployments with no history go first, to be measured."""
    latencies = await health_store().latencies([d.key for d in deployments])
    return sorted(
        by_priority(deployments),
        key=lambda d: -1.0 if latencies.get(d.key) is None else latencies[d.key],
    )


async def least_busy(deployments: list[Deployment], **_) -> list[Deployment]:
    return sorted(by_priority(deployments), key=lambda d: in_flight[d.key])


@dataclass(frozen=True)
class ArmDraw:
    """One deployment in a best_rated draw (for route_explain and the admin dry run)."""

    key: str
    target: str
    posterior: Posterior
    sampled: float
    cost: float
    cost_term: float
    share: float

    @property
    def score(self) -> float:
        return self.sampled - self.cost_term


@dataclass(frozen=True)
class BestRatedDraw:
    """How best_rated chose: the posteriors' scope and age, each arm's draw, and whether this
    request explored (its first choice drawn uniformly, the `min_share` floor)."""

    scope: str  # "global", "tenant", or "cold start" (no ratings yet: by priority)
    age_seconds: float | None
    rollups_at: float | None
    cost_known: bool
    explored: bool
    arms: tuple[ArmDraw, ...] = ()


@dataclass
class Ranking:
    """A strategy's order, and each deployment's probability of having been put first."""

    deployments: list[Deployment]
    shares: dict[str, float] = field(default_factory=dict)
    draw: BestRatedDraw | None = None


async def best_rated(
    deployments: list[Deployment], *, group: str, tenant_id: int = 0,
    settings: BestRatedSettings = BestRatedSettings(), **_,
) -> Ranking:
    """Thompson sampling on the route's feedback: rank by a draw from each deployment's posterior
    minus lambda times its expected cost per request; with probability n x min_share the first
    choice is drawn uniformly instead (each deployment's floor). No rating yet: by priority.
    Per request: one draw per deployment from posteriors kept in process, no database."""
    snapshot = await posteriors_get(group)
    if snapshot is None or not snapshot.ratings:
        ordered = by_priority(deployments)
        age = None if snapshot is None else time.time() - snapshot.computed_at
        draw = BestRatedDraw("cold start", age, snapshot.rollups_at if snapshot else None, False, False)
        return Ranking(ordered, _first_certain(ordered), draw)
    scope = snapshot.scope_for(tenant_id)
    shares = snapshot.shares_for(scope, deployments, settings)
    ordered = by_priority(deployments)  # ties keep the priority order
    arms = [_arm(snapshot, scope, d, settings, shares) for d in ordered]
    ranked = sorted(zip(arms, ordered), key=lambda pair: pair[0].score, reverse=True)
    floor = min(settings.min_share, 1.0 / len(deployments))
    explored = random.random() < floor * len(deployments)
    if explored:
        first = random.randrange(len(ranked))
        ranked.insert(0, ranked.pop(first))
    draw = BestRatedDraw(
        "global" if scope == "" else "tenant", time.time() - snapshot.computed_at, snapshot.rollups_at,
        snapshot.cost_known, explored, tuple(arm for arm, _ in ranked),
    )
    return Ranking([d for _, d in ranked], shares, draw)


def _arm(snapshot: GroupPosteriors, scope: str, deployment: Deployment, settings: BestRatedSettings,
         shares: dict[str, float]) -> ArmDraw:
    target = target_name(deployment)
    posterior = snapshot.posterior(scope, target)
    cost = snapshot.costs.get(target, 0.0)
    return ArmDraw(
        key=deployment.key, target=target, posterior=posterior, sampled=posterior.sample(random), cost=cost,
        cost_term=settings.lam * cost, share=shares.get(deployment.key, 0.0),
    )


def _first_certain(ordered: list[Deployment]) -> dict[str, float]:
    return {ordered[0].key: 1.0} if ordered else {}


def _ranked(order: Callable[..., Awaitable[list[Deployment]]], shares: Callable[[list[Deployment], list[Deployment]], dict[str, float]]):
    async def strategy(deployments: list[Deployment], **kwargs) -> Ranking:
        ordered = await order(deployments, **kwargs)
        return Ranking(ordered, shares(deployments, ordered))

    return strategy


def _each_alike(deployments: list[Deployment], _ordered) -> dict[str, float]:
    return {d.key: 1.0 / len(deployments) for d in deployments}


def _by_weight(deployments: list[Deployment], ordered: list[Deployment]) -> dict[str, float]:
    total = sum(d.weight for d in deployments)
    if not total:  # every weight 0: the sort kept the given order
        return _first_certain(ordered)
    return {d.key: d.weight / total for d in deployments}


STRATEGIES: dict[str, Callable[..., Awaitable[Ranking]]] = {
    Strategy.FALLBACK: _ranked(fallback, lambda _, ordered: _first_certain(ordered)),
    Strategy.ROUND_ROBIN: _ranked(round_robin, _each_alike),
    Strategy.WEIGHTED: _ranked(weighted, _by_weight),
    Strategy.LOWEST_COST: _ranked(lowest_cost, lambda _, ordered: _first_certain(ordered)),
    Strategy.LOWEST_LATENCY: _ranked(lowest_latency, lambda _, ordered: _first_certain(ordered)),
    Strategy.LEAST_BUSY: _ranked(least_busy, lambda _, ordered: _first_certain(ordered)),
    Strategy.BEST_RATED: best_rated,
}


class _LocalTurns:
    def __init__(self) -> None:
        self.counters: dict[str, itertools.count] = {}

    async def next(self, group: str) -> int:
        return next(self.counters.setdefault(group, itertools.count()))


class _RedisTurns:
    """A counter per route group in Redis, so every replica takes turns from one sequence."""

    def __init__(self, *, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.redis = RedisConnections(url)
        self.fallback: RedisFallback[_LocalTurns] = RedisFallback(
            what="round-robin counters", make_local=_LocalTurns
        )

    async def next(self, group: str) -> int:
        async def remote() -> int:
            return int(await self.redis.async_client().incr(f"{self.prefix}:rr:{group}")) - 1

        return await self.fallback.run(remote, lambda local: local.next(group))


async def _next_turn(group: str) -> int:
    return await shared_store(local=_LocalTurns, remote=_RedisTurns).next(group)
