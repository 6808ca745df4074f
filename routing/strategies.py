"""Routing strategies: each orders a route group's deployments for one request.

The first deployment is the one tried first; the rest are the failover order. Circuit breakers
are applied afterwards, while attempting (`routing.attempts`).
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal

from kernel.redis_client import RedisConnections, RedisFallback, shared_store
from providers.selectors import Deployment
from routing.health import health_store
from routing.models import Strategy

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


STRATEGIES: dict[str, Callable[..., Awaitable[list[Deployment]]]] = {
    Strategy.FALLBACK: fallback,
    Strategy.ROUND_ROBIN: round_robin,
    Strategy.WEIGHTED: weighted,
    Strategy.LOWEST_COST: lowest_cost,
    Strategy.LOWEST_LATENCY: lowest_latency,
    Strategy.LEAST_BUSY: least_busy,
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
