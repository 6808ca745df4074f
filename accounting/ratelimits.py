"""Requests-per-minute and tokens-per-minute limits: one token bucket per (scope, kind).

A bucket such as `"key:12:rpm"` or `"tenant:3:tpm"` holds at most `per_minute` tokens and refills
continuously at `per_minute / 60` per second, so a full bucket allows a burst of `per_minute` and
then a steady `per_minute` a minute. A request takes 1 from each rpm bucket and its estimated
tokens from each tpm bucket, from all of them or from none; once the provider reports the real
usage, the difference is refunded or taken as well (the bucket may go into debt, so the next
requests wait for it).

With `REDIS_URL` set the buckets live in Redis, so every replica draws from the same buckets; one
Lua script checks and takes across all the buckets of a request atomically. Without Redis they
live in process.

While Redis does not answer, rate limits FAIL OPEN to the in-process buckets of each process
(`kernel.redis_client.RedisFallback`): a request is never refused because Redis is down, and
each replica enforces the limits on its own traffic only, so N replicas admit up to N times the
limit until Redis answers again. Refusing every request during a Redis outage would turn an
optimisation into a single point of failure; budgets (in PostgreSQL) still bound the spend.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kernel.rates import LEASE_MAX_SECONDS, RecentAmounts
from kernel.redis_client import RedisConnections, RedisFallback, shared_store

REQUESTS, TOKENS = "requests", "tokens"
# Float slack when comparing token levels: 0.1 + 0.2 tokens of refill must still pay for 0.3.
EPSILON = 1e-9
# Queued requests that wake up together would race for the same refill; spread them a little.
JITTER_SECONDS = 0.05


@dataclass(frozen=True)
class Limit:
    name: str  # the bucket, e.g. "key:12:rpm"
    kind: str  # REQUESTS or TOKENS
    per_minute: int

    def __post_init__(self) -> None:
        # A limit of 0 is a block, not a bucket: callers refuse those without asking a store.
        if self.kind not in (REQUESTS, TOKENS) or self.per_minute < 1:
            raise ValueError(f"invalid rate limit: {self!r}")

    @property
    def per_second(self) -> float:
        return self.per_minute / 60


@dataclass(frozen=True)
class LimitState:
    limit: Limit
    remaining: int  # whole tokens left now, 0 while in debt
    reset_seconds: float  # until the bucket is full again


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limits: list[LimitState]
    # When refused: seconds until the request would fit (math.inf if it exceeds a capacity).
    retry_after: float = 0.0


def _refilled(tokens: float | None, updated_at: float | None, now: float, limit: Limit) -> float:
    """The level of a bucket at `now`; an unknown bucket is full."""
    if tokens is None or updated_at is None:
        return float(limit.per_minute)
    # The same operations, in the same order, as the Lua `refill`: both stores round alike.
    return min(float(limit.per_minute), tokens + max(0.0, now - updated_at) * limit.per_minute / 60)


def _state(limit: Limit, level: float) -> LimitState:
    reset = max(0.0, (limit.per_minute - level) / limit.per_second)
    return LimitState(limit, max(0, math.floor(level + EPSILON)), reset)


def _wait(limit: Limit, level: float, amount: int) -> float:
    if amount > limit.per_minute:
        return math.inf  # never fits, as OpenAI's "request too large"
    return max(0.0, (amount - level) / limit.per_second)


def _decision(
    limits: list[Limit], amounts: dict[str, int], levels: list[float], allowed: bool,
) -> Decision:
    """`levels` are after the take when allowed, before it (untouched) when refused."""
    states = [_state(limit, level) for limit, level in zip(limits, levels)]
    if allowed:
        return Decision(True, states)
    waits = [_wait(limit, level, amounts[limit.name]) for limit, level in zip(limits, levels)]
    return Decision(False, states, max(waits))


def _checked(limits: list[Limit], amounts: dict[str, int]) -> list[Limit]:
    unique = list({limit.name: limit for limit in limits}.values())
    for limit in unique:
        _amount(amounts[limit.name])
    return unique


def _amount(amount: int) -> int:
    if amount < 0:
        raise ValueError(f"negative amount of tokens: {amount}")
    return amount


class RateLimitStore:
    """Where the buckets live. Every backend implements the same token buckets:

    - `acquire(limits, amounts)` takes `amounts[limit.name]` from every bucket in `limits`, or
      from none when any of them holds less than its amount (all or nothing, atomically, also
      across replicas on Redis). The decision lists every bucket's state after the call; when
      refused, `retry_after` is how long until all the buckets would hold enough (math.inf when an
      amount exceeds a bucket's capacity: it never fits).
    - `refund(limit, amount)` gives tokens back (usage below the estimate), never above capacity.
    - `adjust(limit, amount)` takes more tokens (usage above the estimate) without a check: the
      bucket may go negative and the next requests wait until it has refilled.
    - `acquire_now(limits, amounts)` is the same take when it can be decided without waiting for
      anything (in process; with Redis, from this process's leases), and None when it cannot or
      when it would be refused: then `acquire` decides.
    - `states_sync(limits)` only reads; for sync callers (admin pages), one round trip.

    A bucket not seen before is full. Buckets are keyed by `Limit.name` alone; the capacity comes
    from the `Limit` of each call, so a changed limit applies at once. `clock` gives seconds;
    tests inject one.
    """

    async def acquire(self, limits: list[Limit], amounts: dict[str, int]) -> Decision:
        raise NotImplementedError

    def acquire_now(self, limits: list[Limit], amounts: dict[str, int]) -> Decision | None:
        return None

    async def refund(self, limit: Limit, amount: int) -> None:
        raise NotImplementedError

    async def adjust(self, limit: Limit, amount: int) -> None:
        raise NotImplementedError

    def change_now(self, limit: Limit, delta: int) -> bool:
        """A refund (`delta` > 0) or an adjustment (< 0) made without waiting, when the store can
        (its in-process buckets, or this process's live lease of the Redis bucket); False when
        it cannot, and then `refund` or `adjust` makes it."""
        return False

    def states_sync(self, limits: list[Limit]) -> dict[str, LimitState]:
        raise NotImplementedError


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


class LocalRateLimitStore(RateLimitStore):
    """Buckets in this process's memory: the embedded mode, and the fallback of the Redis store.

    Nothing here awaits, so each method is atomic for asyncio; the lock covers the admin, which
    reads from another thread. A bucket that is full again is dropped (as Redis expires it).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _level(self, limit: Limit, now: float) -> float:
        bucket = self._buckets.get(limit.name)
        if bucket is None:
            return float(limit.per_minute)
        return _refilled(bucket.tokens, bucket.updated_at, now, limit)

    def _set(self, limit: Limit, level: float, now: float) -> None:
        bucket = self._buckets.get(limit.name)
        if level >= limit.per_minute:
            self._buckets.pop(limit.name, None)
        else:  # never move a bucket's time backwards: that would refill it twice
            stamp = max(now, bucket.updated_at) if bucket else now
            self._buckets[limit.name] = _Bucket(level, stamp)

    async def acquire(self, limits: list[Limit], amounts: dict[str, int]) -> Decision:
        return self._take(limits, amounts)

    def acquire_now(self, limits: list[Limit], amounts: dict[str, int]) -> Decision | None:
        decision = self._take(limits, amounts)
        return decision if decision.allowed else None

    def _take(self, limits: list[Limit], amounts: dict[str, int]) -> Decision:
        limits = _checked(limits, amounts)
        now = self.clock()
        with self._lock:
            levels = [self._level(limit, now) for limit in limits]
            wanted = [amounts[limit.name] for limit in limits]
            allowed = all(level + EPSILON >= amount for level, amount in zip(levels, wanted))
            if allowed:
                levels = [level - amount for level, amount in zip(levels, wanted)]
                for limit, level in zip(limits, levels):
                    self._set(limit, level, now)
        return _decision(limits, amounts, levels, allowed)

    async def refund(self, limit: Limit, amount: int) -> None:
        self._add(limit, _amount(amount))

    async def adjust(self, limit: Limit, amount: int) -> None:
        self._add(limit, -_amount(amount))

    def change_now(self, limit: Limit, delta: int) -> bool:
        self._add(limit, delta)
        return True

    def _add(self, limit: Limit, delta: int) -> None:
        now = self.clock()
        with self._lock:
            self._set(limit, min(float(limit.per_minute), self._level(limit, now) + delta), now)

    def states_sync(self, limits: list[Limit]) -> dict[str, LimitState]:
        now = self.clock()
        with self._lock:
            return {limit.name: _state(limit, self._level(limit, now)) for limit in limits}


# Shared by both scripts: `refill` mirrors `_refilled` (returns the level and the time to store),
# `store` writes a bucket back, or drops it once full.
_REFILL = """
local function refill(key, capacity, now)
  local tokens, updated_at = unpack(redis.call('HMGET', key, 'tokens', 'updated_at'))
  if not tokens or not updated_at then return capacity, now end
  tokens, updated_at = tonumber(tokens), tonumber(updated_at)
  local level = math.min(capacity, tokens + math.max(0, now - updated_at) * capacity / 60)
  return level, math.max(now, updated_at)
end
local function store(key, capacity, level, stamp)
  if level >= capacity then redis.call('DEL', key) return end
  redis.call('HSET', key, 'tokens', string.format('%.17g', level),
             'updated_at', string.format('%.17g', stamp))
  -- kept until it would be full again (then it is the same as no key), plus a minute
  redis.call('EXPIRE', key, math.ceil((capacity - level) * 60 / capacity) + 60)
end
"""

# KEYS the buckets; ARGV now, then per key: capacity, amount, lease wanted, lease given back.
# What is given back is added first (never above capacity), whatever the decision. When every
# amount fits, each is taken, and with it a lease of up to what was wanted, from the upper half of
# the bucket only. Returns {allowed, levels..., leases...}, as strings (a Lua number would come
# back truncated to an integer); the levels are after the take when allowed (the lease still in
# them, as if it had not been taken), before it when refused.
_ACQUIRE = _REFILL + """
local now = tonumber(ARGV[1])
local levels, stamps, fits = {}, {}, true
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[4 * i - 2])
  local level, stamp = refill(key, capacity, now)
  levels[i], stamps[i] = math.min(capacity, level + tonumber(ARGV[4 * i + 1])), stamp
  if levels[i] + 1e-9 < tonumber(ARGV[4 * i - 1]) then fits = false end  -- EPSILON
end
local out, leases = {fits and 1 or 0}, {}
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[4 * i - 2])
  leases[i] = 0
  if fits then
    levels[i] = levels[i] - tonumber(ARGV[4 * i - 1])
    leases[i] = math.max(0, math.floor(math.min(tonumber(ARGV[4 * i]), levels[i] - capacity / 2)))
    store(key, capacity, levels[i] - leases[i], stamps[i])
  elseif tonumber(ARGV[4 * i + 1]) > 0 then
    store(key, capacity, levels[i], stamps[i])
  end
  out[i + 1] = string.format('%.17g', levels[i])
  out[#KEYS + i + 1] = string.format('%.17g', leases[i])
end
return out
"""

# KEYS[1] the bucket; ARGV now, capacity, delta (negative takes). Never above capacity.
_ADD = _REFILL + """
local capacity = tonumber(ARGV[2])
local level, stamp = refill(KEYS[1], capacity, tonumber(ARGV[1]))
store(KEYS[1], capacity, math.min(capacity, level + tonumber(ARGV[3])), stamp)
"""


def _float(value: str | None) -> float | None:
    return float(value) if value is not None else None


@dataclass
class _Lease:
    """Tokens of one bucket this process took from Redis ahead of its requests."""

    per_minute: int  # the capacity it was taken under: a changed limit ends it
    left: float  # not yet used by a request
    level: float  # the bucket's level in Redis after the take (the lease not in it)
    expires: float  # clock(): after this the lease goes back with the bucket's next take


class RedisRateLimitStore(RateLimitStore):
    """Buckets in Redis, one hash {tokens, updated_at} per bucket (`{prefix}:rl:{name}`), shared
    by every replica.

    `acquire` is one Lua script over all the buckets of the request, `refund` and `adjust` one
    over one bucket. `now` is passed into the scripts (not Redis TIME) so one clock rules both
    backends and tests can move it. A bucket's key expires a minute after it would be full again.
    The keys of one call must live on one Redis node (no Redis Cluster slots).

    Leases: a process that takes from a bucket often takes, with a request's amount, a lease of
    `lease_seconds` of its own traffic of the last second (at most `LEASE_MAX_SHARE` of the
    capacity, and only from the upper half of the bucket), and serves its next requests from it in
    process (`acquire_now`), refunds and corrections included, until it runs short or is
    `LEASE_MAX_SECONDS` old. The next take of the bucket that goes to Redis gives what is left
    back in the same script call. Leased tokens are taken from the bucket, so every process
    together never takes more than the limit; a bucket below half full is never leased, so near
    its limit every request is decided by Redis, exactly. A process that stops taking keeps its
    last lease (under `lease_seconds` of its traffic) until the bucket refills it.
    """

    def __init__(
        self, *, url: str, prefix: str, clock: Callable[[], float] = time.time,
        retry_after: float = 1.0, timeout: float = 0.5, lease_seconds: float | None = None,
    ) -> None:
        self.clock = clock
        self._prefix = prefix
        self._redis = RedisConnections(url, timeout=timeout)
        self.fallback: RedisFallback[LocalRateLimitStore] = RedisFallback(
            what="rate limits", make_local=lambda: LocalRateLimitStore(clock=self.clock),
            retry_after=retry_after,
        )
        if lease_seconds is None:
            from django.conf import settings

            lease_seconds = settings.GATEWAY_RATE_LIMIT_LEASE_SECONDS
        self.lease_seconds = lease_seconds
        self._leases: dict[str, _Lease] = {}
        self._traffic = RecentAmounts()

    def _key(self, name: str) -> str:
        return f"{self._prefix}:rl:{name}"

    def acquire_now(self, limits: list[Limit], amounts: dict[str, int]) -> Decision | None:
        """The take from this process's leases, when every bucket's lease holds its amount; None
        when one does not (then `acquire` asks Redis). Nothing here awaits."""
        if not self._leases:
            return None
        return self._from_leases(_checked(limits, amounts), amounts)

    def _from_leases(self, limits: list[Limit], amounts: dict[str, int]) -> Decision | None:
        now = self.clock()
        leases = []
        for limit in limits:
            lease = self._leases.get(limit.name)
            if not _lease_holds(lease, limit, amounts[limit.name], now):
                return None
            leases.append(lease)
        states = []
        for limit, lease in zip(limits, leases):
            lease.left -= amounts[limit.name]
            self._traffic_note(limit.name, amounts[limit.name], now)
            states.append(_state(limit, lease.level + lease.left))
        return Decision(True, states)

    async def acquire(self, limits: list[Limit], amounts: dict[str, int]) -> Decision:
        limits = _checked(limits, amounts)
        if not limits:
            return Decision(True, [])
        if self._leases and (decision := self._from_leases(limits, amounts)) is not None:
            return decision

        async def remote() -> Decision:
            now = self.clock()
            args: list[float | int] = [now]
            for limit in limits:
                amount = amounts[limit.name]
                self._traffic_note(limit.name, amount, now)
                # What is left of the bucket's lease goes back in this call; a fresh one comes.
                lease = self._leases.pop(limit.name, None)
                back = lease.left if lease is not None else 0  # never above capacity, in the script
                args += [limit.per_minute, amount, self._lease_wanted(limit, amount), back]
            keys = [self._key(limit.name) for limit in limits]
            allowed, *out = await self._redis.script(_ACQUIRE, keys=keys, args=args)
            levels = [float(level) for level in out[:len(limits)]]
            if allowed:
                for limit, level, lease in zip(limits, levels, out[len(limits):]):
                    self._lease_add(limit, level, float(lease), now)
            return _decision(limits, amounts, levels, bool(allowed))

        return await self.fallback.run(remote, lambda local: local.acquire(limits, amounts))

    def _traffic_note(self, name: str, amount: int, now: float) -> None:
        self._traffic.note(name, amount, now)

    def _lease_wanted(self, limit: Limit, amount: int) -> int:
        return int(self._traffic.ahead(
            limit.name, seconds=self.lease_seconds, capacity=limit.per_minute, amount=max(amount, 1)))

    def _lease_add(self, limit: Limit, level: float, tokens: float, now: float) -> None:
        if tokens <= 0:
            return
        lease = self._leases.get(limit.name)
        if lease is not None and lease.per_minute == limit.per_minute:
            # Another take of this loop got a lease meanwhile: one lease, both their tokens.
            lease.left += tokens
            lease.level = min(lease.level, level - tokens)
            lease.expires = now + LEASE_MAX_SECONDS
            return
        self._leases[limit.name] = _Lease(limit.per_minute, tokens, level - tokens, now + LEASE_MAX_SECONDS)

    async def refund(self, limit: Limit, amount: int) -> None:
        if self._lease_change(limit, _amount(amount)):
            return
        await self._add(limit, _amount(amount), lambda local: local.refund(limit, amount))

    async def adjust(self, limit: Limit, amount: int) -> None:
        if self._lease_change(limit, -_amount(amount)):
            return
        await self._add(limit, -_amount(amount), lambda local: local.adjust(limit, amount))

    def change_now(self, limit: Limit, delta: int) -> bool:
        return self._lease_change(limit, delta)

    def _lease_change(self, limit: Limit, delta: int) -> bool:
        """A refund or a correction made on the bucket's live lease, if it has one that covers it
        (the tokens were taken from Redis already: the lease gives them back or pays for more)."""
        lease = self._leases.get(limit.name)
        if delta == 0 or not _lease_holds(lease, limit, max(0, -delta), self.clock()):
            return False
        lease.left += delta
        return True

    async def _add(
        self, limit: Limit, delta: int, local: Callable[[LocalRateLimitStore], Awaitable[None]],
    ) -> None:
        if delta == 0:
            return

        async def remote() -> None:
            args = [self.clock(), limit.per_minute, delta]
            # A settlement nobody waits for (`quotas.rate_limit_settle`, in the background): it
            # goes out with this loop's next Redis call, which is usually the next request's take.
            await self._redis.script(_ADD, keys=[self._key(limit.name)], args=args, deferred=True)

        await self.fallback.run(remote, local)

    def states_sync(self, limits: list[Limit]) -> dict[str, LimitState]:
        def remote() -> dict[str, LimitState]:
            pipe = self._redis.sync_client().pipeline(transaction=False)
            for limit in limits:
                pipe.hmget(self._key(limit.name), ["tokens", "updated_at"])
            now = self.clock()
            return {
                limit.name: _state(limit, _refilled(_float(tokens), _float(updated_at), now, limit))
                for limit, (tokens, updated_at) in zip(limits, pipe.execute())
            }

        return self.fallback.run_sync(remote, lambda local: local.states_sync(limits))

    async def aclose(self) -> None:
        await self._redis.aclose()


def _lease_holds(lease: _Lease | None, limit: Limit, amount: int, now: float) -> bool:
    return (
        lease is not None and lease.per_minute == limit.per_minute and now < lease.expires
        and lease.left + EPSILON >= amount
    )


def rate_limit_store() -> RateLimitStore:
    """The process's shared store: Redis when `REDIS_URL` is set, else in process."""
    return shared_store(local=LocalRateLimitStore, remote=RedisRateLimitStore)


async def acquire_waiting(
    store: RateLimitStore, limits: list[Limit], amounts: dict[str, int], *, queue_seconds: float,
) -> Decision:
    """`store.acquire`, waiting up to `queue_seconds` for capacity instead of refusing at once.

    A refused request sleeps until it would fit (plus a little jitter), if that is within the
    queue time left, and tries again; the last decision is returned. Waiters hold no place in a
    line: whoever asks first after a refill gets it, and the loser waits again or gives up.
    """
    deadline = time.monotonic() + queue_seconds
    while True:
        decision = await store.acquire(limits, amounts)
        left = deadline - time.monotonic()
        if decision.allowed or decision.retry_after > left:
            return decision
        await asyncio.sleep(min(decision.retry_after + random.uniform(0, JITTER_SECONDS), left))


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers, from the lowest-remaining bucket of each kind.

    https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers ; a kind without a
    bucket gets no headers.
    """
    headers: dict[str, str] = {}
    for kind in (REQUESTS, TOKENS):
        states = [state for state in decision.limits if state.limit.kind == kind]
        if not states:
            continue
        tightest = min(states, key=lambda state: (state.remaining, -state.reset_seconds))
        headers[f"x-ratelimit-limit-{kind}"] = str(tightest.limit.per_minute)
        headers[f"x-ratelimit-remaining-{kind}"] = str(tightest.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = duration_header(tightest.reset_seconds)
    return headers


def duration_header(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's `time.Duration`), to the millisecond, rounded up:
    "20ms", "1s", "8.64s", "6m0s", "1h0m0s"."""
    millis = math.ceil(round(seconds * 1000, 6))
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    text = f"{secs}.{millis:03d}".rstrip("0") + "s" if millis else f"{secs}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text
