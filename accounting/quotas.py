"""Rate limits on the hot path: which buckets a request draws from, and the answer when empty.

Each tenant and each key may have requests-per-minute and tokens-per-minute limits
(`RateLimit` rows, cached here like the other hot-path configuration). A request takes one
request and its estimated tokens (prompt plus its `max_tokens`, as OpenAI counts them) from every
bucket that applies, all or nothing, optionally waiting up to `queue_seconds` for capacity. Once
the real usage is known the token buckets are corrected.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from dataclasses import dataclass, field

from django.db.models import Q

from accounting.models import RateLimit
from accounting.ratelimits import (
    REQUESTS,
    TOKENS,
    Decision,
    Limit,
    LimitState,
    acquire_waiting,
    rate_limit_store,
    ratelimit_headers,
)
from kernel.config_cache import ConfigCache
from kernel.config_generation import generation
from kernel.errors import GatewayError


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    error_class = "rate_limit_exceeded"

    def __init__(self, decision: Decision) -> None:
        empty = [state for state in decision.limits if state.remaining <= 0] or decision.limits
        kind = empty[0].limit.kind if empty else REQUESTS
        if math.isinf(decision.retry_after):
            message = "This request needs more tokens than the tokens-per-minute limit allows at all."
        else:
            message = (
                f"Rate limit reached for {kind} per minute; retry after {decision.retry_after:.1f}s."
            )
        super().__init__(message, headers=ratelimit_headers(decision))
        self.type = kind
        if not math.isinf(decision.retry_after):
            self.headers["retry-after"] = str(max(1, math.ceil(decision.retry_after)))


@dataclass(frozen=True)
class RateLimitRule:
    scope: str  # "tenant:3" or "key:12"
    rpm: int | None
    tpm: int | None
    queue_seconds: float


@dataclass
class Charge:
    """What a request took from the token buckets, to correct once its usage is known."""

    token_limits: list[Limit] = field(default_factory=list)
    tokens: int = 0


_cache: ConfigCache[tuple[RateLimitRule, ...]] = ConfigCache("rate limits")


async def rate_limits_for(*, tenant_id: int, key_id: int) -> tuple[RateLimitRule, ...]:
    return await _cache.get((tenant_id, key_id), functools.partial(_rules_load, tenant_id, key_id))


def _rules_load(tenant_id: int, key_id: int) -> tuple[RateLimitRule, ...]:
    rows = RateLimit.objects.filter(tenant_id=tenant_id).filter(Q(api_key__isnull=True) | Q(api_key_id=key_id))
    return tuple(
        RateLimitRule(
            scope=f"key:{row.api_key_id}" if row.api_key_id else f"tenant:{tenant_id}",
            rpm=row.rpm or None,
            tpm=row.tpm or None,
            queue_seconds=row.queue_seconds,
        )
        for row in rows
    )


async def rate_limit_take(
    *, rules: tuple[RateLimitRule, ...], tokens: int
) -> tuple[dict[str, str], Charge]:
    """Take one request and `tokens` from every bucket, or raise RateLimited; returns headers."""
    limits, amounts, charge = _buckets(rules, tokens)
    if not limits:
        return {}, Charge()
    queue = max(rule.queue_seconds for rule in rules)
    decision = await acquire_waiting(rate_limit_store(), limits, amounts, queue_seconds=queue)
    if not decision.allowed:
        _refusals_note(rules)
        raise RateLimited(decision)
    return ratelimit_headers(decision), charge


def rate_limit_take_now(
    *, rules: tuple[RateLimitRule, ...], tokens: int
) -> tuple[dict[str, str], Charge] | None:
    """`rate_limit_take` when the store can answer without waiting (its in-process buckets, or
    this process's leases of the Redis ones) and the take is allowed; None otherwise, and then
    `rate_limit_take` decides (a refusal, a queue, a round trip to Redis)."""
    limits, amounts, charge = _buckets(rules, tokens)
    if not limits:
        return {}, Charge()
    decision = rate_limit_store().acquire_now(limits, amounts)
    if decision is None:
        return None
    return ratelimit_headers(decision), charge


def _buckets(rules: tuple[RateLimitRule, ...], tokens: int) -> tuple[list[Limit], dict[str, int], Charge]:
    limits, amounts = [], {}
    charge = Charge(tokens=tokens)
    for rule in rules:
        if rule.rpm:
            limit = Limit(name=f"{rule.scope}:rpm", kind=REQUESTS, per_minute=rule.rpm)
            limits.append(limit)
            amounts[limit.name] = 1
        if rule.tpm:
            limit = Limit(name=f"{rule.scope}:tpm", kind=TOKENS, per_minute=rule.tpm)
            limits.append(limit)
            amounts[limit.name] = tokens
            charge.token_limits.append(limit)
    return limits, amounts, charge


def rate_limit_states(*, tenant_id: int, key_id: int) -> list[LimitState]:
    """The state now of every bucket a request of the key draws from (the tenant's and the key's
    own), for pages: one read of the shared store, nothing taken."""
    limits, _, _ = _buckets(_rules_load(tenant_id, key_id), 0)
    states = rate_limit_store().states_sync(limits) if limits else {}
    return [states[limit.name] for limit in limits]


# When this process last refused a request under each rule scope (time.monotonic()), and under
# which configuration generation: once the limits change, refusals under the old ones say nothing.
_refused: dict[str, tuple[int, float]] = {}
REFUSAL_MEMORY_SECONDS = 60.0


def rate_limit_refusing(rules: tuple[RateLimitRule, ...]) -> bool:
    """Whether this process refused a request under one of `rules` in the last minute: while it
    does, a request's take is answered before anything else of the request starts, so that
    refused requests cost the database nothing (routing/pipeline.py `_prepare`)."""
    if not _refused:
        return False
    now, current = time.monotonic(), generation.seen()
    for rule in rules:
        refused = _refused.get(rule.scope)
        if refused is not None and refused[0] == current and now - refused[1] < REFUSAL_MEMORY_SECONDS:
            return True
    return False


def _refusals_note(rules: tuple[RateLimitRule, ...]) -> None:
    if len(_refused) >= 10_000:
        _refused.clear()
    refused = (generation.seen(), time.monotonic())
    for rule in rules:
        _refused[rule.scope] = refused


def rate_limit_settle_now(*, charge: Charge, actual_tokens: int) -> list[Limit]:
    """`rate_limit_settle` of what can be settled without waiting (the in-process buckets, or this
    process's leases of the Redis ones); returns the token limits left for `rate_limit_settle`."""
    difference = actual_tokens - charge.tokens
    if not difference:
        return []
    store = rate_limit_store()
    return [limit for limit in charge.token_limits if not store.change_now(limit, -difference)]


async def rate_limit_settle(*, charge: Charge, actual_tokens: int, limits: list[Limit] | None = None) -> None:
    """Give back what the estimate over-charged, or take what it under-charged (on `limits`, by
    default every token limit of the charge)."""
    difference = actual_tokens - charge.tokens
    if not difference:
        return
    store = rate_limit_store()
    # Together, so that they share one Redis pipeline.
    await asyncio.gather(*(
        store.refund(limit, -difference) if difference < 0 else store.adjust(limit, difference)
        for limit in (charge.token_limits if limits is None else limits)
    ))
