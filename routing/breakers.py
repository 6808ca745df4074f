"""Circuit breakers per deployment: stop sending traffic to a deployment that keeps failing.

A breaker is closed (traffic flows), open (traffic denied until a cooldown is over) or half-open
(one probe request is out; its outcome closes or re-opens the breaker). With `REDIS_URL` set the
state lives in Redis, so every replica opens and closes the same breakers; each transition is one
Lua script, so concurrent requests on many replicas cannot both take the single probe. Without
Redis it lives in process.

Redis is an optimisation of the gateway, not a dependency of serving: when it does not answer, the
Redis stores decide from an in-process store for that call and go back to Redis once it answers.
`kernel.redis_client.RedisFallback` carries that rule.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from kernel.redis_client import RedisConnections, RedisFallback, shared_store

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# A breaker hash not written for this long is dropped, so deleted deployments don't leak keys.
KEY_TTL_SECONDS = 24 * 3600




@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how long it stays open; route groups may bring their own."""

    failure_threshold: int
    cooldown_seconds: float

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.cooldown_seconds <= 0:
            raise ValueError(f"invalid breaker policy: {self!r}")

    @classmethod
    def default(cls) -> BreakerPolicy:
        return cls(
            failure_threshold=settings.GATEWAY_BREAKER_FAILURE_THRESHOLD,
            cooldown_seconds=settings.GATEWAY_BREAKER_COOLDOWN_SECONDS,
        )


@dataclass(frozen=True)
class BreakerStatus:
    state: str
    failures: int
    opened_at: float | None
    retry_in: float


@dataclass
class _Breaker:
    state: str = CLOSED
    failures: int = 0
    opened_at: float | None = None
    probe_at: float | None = None

    def status(self, *, now: float, policy: BreakerPolicy) -> BreakerStatus:
        retry_in = 0.0
        if self.state == OPEN and self.opened_at is not None:
            retry_in = max(0.0, self.opened_at + policy.cooldown_seconds - now)
        return BreakerStatus(self.state, self.failures, self.opened_at, retry_in)


def _log_opened(key: str, failures: int) -> None:
    logger.warning("circuit breaker of deployment %s opened after %d failures", key, failures)


class BreakerStore:
    """Where breaker state lives. Every backend implements the same state machine:

    - `allow`: closed lets the call through. Open denies it until `cooldown_seconds` after it
      opened; the first call after that turns the breaker half-open and is the probe. Half-open
      denies everyone while the probe is out, unless the probe has been out longer than
      `cooldown_seconds`: then it was lost (its process died) and the caller becomes the new probe.
    - `record_success`: closed, failure count 0 (also for a request that started before the
      breaker opened: the deployment answered, which is what a probe would have shown).
    - `record_failure`: one more consecutive failure; a failed probe re-opens the breaker with a
      fresh cooldown; a closed breaker opens when the failures reach `failure_threshold`.
    - `status` and `statuses_sync` only read: an open breaker past its cooldown still reads "open"
      (with `retry_in` 0) until a call to `allow` takes the probe.
    - `reset`: forget the key (closed, no failures); for operators.

    Unknown keys are closed with no failures. `clock` gives wall-clock seconds; tests inject one.
    """

    async def allow(self, key: str, *, policy: BreakerPolicy) -> bool:
        raise NotImplementedError

    async def record_success(self, key: str, *, policy: BreakerPolicy) -> None:
        raise NotImplementedError

    async def record_failure(self, key: str, *, policy: BreakerPolicy) -> None:
        raise NotImplementedError

    async def status(self, key: str, *, policy: BreakerPolicy) -> BreakerStatus:
        raise NotImplementedError

    def statuses_sync(self, keys: list[str], *, policy: BreakerPolicy) -> dict[str, BreakerStatus]:
        """For sync callers (admin pages, management commands); one round trip for all keys."""
        raise NotImplementedError

    async def reset(self, key: str) -> None:
        raise NotImplementedError


class LocalBreakerStore(BreakerStore):
    """Breakers in this process's memory: the embedded mode, and the fallback of the Redis store.

    Nothing here awaits, so each method is atomic for asyncio; the lock covers the admin, which
    reads from another thread.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._breakers: dict[str, _Breaker] = {}
        self._lock = threading.Lock()

    async def allow(self, key: str, *, policy: BreakerPolicy) -> bool:
        now = self.clock()
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None or breaker.state == CLOSED:
                return True
            if breaker.state == OPEN:
                if now - (breaker.opened_at or 0.0) < policy.cooldown_seconds:
                    return False
                breaker.state = HALF_OPEN
            elif now - (breaker.probe_at or 0.0) < policy.cooldown_seconds:
                return False
            breaker.probe_at = now
            return True

    async def record_success(self, key: str, *, policy: BreakerPolicy) -> None:
        with self._lock:
            self._breakers.pop(key, None)

    async def record_failure(self, key: str, *, policy: BreakerPolicy) -> None:
        now = self.clock()
        with self._lock:
            breaker = self._breakers.setdefault(key, _Breaker())
            breaker.failures += 1
            opens = breaker.state == HALF_OPEN or (
                breaker.state == CLOSED and breaker.failures >= policy.failure_threshold
            )
            if opens:
                breaker.state, breaker.opened_at, breaker.probe_at = OPEN, now, None
            failures = breaker.failures
        if opens:
            _log_opened(key, failures)

    async def status(self, key: str, *, policy: BreakerPolicy) -> BreakerStatus:
        return self.statuses_sync([key], policy=policy)[key]

    def statuses_sync(self, keys: list[str], *, policy: BreakerPolicy) -> dict[str, BreakerStatus]:
        now = self.clock()
        with self._lock:
            breakers = {key: self._breakers.get(key, _Breaker()) for key in keys}
        return {key: breaker.status(now=now, policy=policy) for key, breaker in breakers.items()}

    async def reset(self, key: str) -> None:
        with self._lock:
            self._breakers.pop(key, None)


# KEYS[1] the breaker hash; ARGV now, cooldown_seconds, ttl. Returns 1 to let the call through,
# 2 when there is no hash at all (no failure on record: a success has nothing to reset), 0 not.
_ALLOW = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 2 end
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return 1 end
local now = tonumber(ARGV[1])
local cooldown = tonumber(ARGV[2])
if state == 'open' then
  if now - (tonumber(redis.call('HGET', KEYS[1], 'opened_at')) or 0) < cooldown then return 0 end
  redis.call('HSET', KEYS[1], 'state', 'half_open')
elseif now - (tonumber(redis.call('HGET', KEYS[1], 'probe_at')) or 0) < cooldown then
  return 0
end
redis.call('HSET', KEYS[1], 'probe_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] the breaker hash; ARGV now, failure_threshold, ttl. Returns the failure count if this
# failure opened the breaker, else 0.
_RECORD_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local opens = state == 'half_open' or (state == 'closed' and failures >= tonumber(ARGV[2]))
if opens then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'probe_at')
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if opens then return failures end
return 0
"""

_FIELDS = ("state", "failures", "opened_at")


def _breaker_from(values: list[str | None]) -> _Breaker:
    state, failures, opened_at = values
    return _Breaker(state or CLOSED, int(failures or 0), float(opened_at) if opened_at else None)


class RedisBreakerStore(BreakerStore):
    """Breakers in Redis, one hash per key (`{prefix}:breaker:{key}`), shared by every replica.

    `allow` and `record_failure` are one Lua script each; success and reset are a single DEL,
    atomic by itself. `now` is passed into the scripts (not Redis TIME) so one clock rules both
    backends and tests can move it.

    A success costs no round trip when this process's last `allow` for the key found no breaker
    hash and no failure was recorded here since (the common case: a healthy deployment): there is
    nothing to delete. A failure another process records in between is then reset by the next
    success whose `allow` saw it, one request later than with a DEL per success.

    Such a clean key is also let through without asking Redis for `clean_seconds` after that
    `allow` (`GATEWAY_BREAKER_CLEAN_SECONDS`): a healthy deployment costs no round trip per
    request. A breaker that another process opens meanwhile is therefore seen here up to
    `clean_seconds` late, or at this process's own next failure of the key, which forgets it at
    once. 0 asks Redis on every call.
    """

    def __init__(
        self, *, url: str, prefix: str, clock: Callable[[], float] = time.time,
        retry_after: float = 1.0, timeout: float = 0.5, clean_seconds: float | None = None,
    ) -> None:
        self.clock = clock
        self._prefix = prefix
        self._redis = RedisConnections(url, timeout=timeout)
        self.clean_seconds = settings.GATEWAY_BREAKER_CLEAN_SECONDS if clean_seconds is None else clean_seconds
        # Keys whose last `allow` found no hash, with no failure since: when that `allow` was.
        self._clean: dict[str, float] = {}
        self.fallback: RedisFallback[LocalBreakerStore] = RedisFallback(
            what="circuit breakers", make_local=lambda: LocalBreakerStore(clock=self.clock),
            retry_after=retry_after,
        )

    def _key(self, key: str) -> str:
        return f"{self._prefix}:breaker:{key}"

    async def allow(self, key: str, *, policy: BreakerPolicy) -> bool:
        now = self.clock()
        seen = self._clean.get(key)
        if seen is not None and 0 <= now - seen < self.clean_seconds:
            return True

        async def remote() -> bool:
            args = [now, policy.cooldown_seconds, KEY_TTL_SECONDS]
            answer = await self._redis.script(_ALLOW, keys=[self._key(key)], args=args)
            if answer == 2:
                self._clean[key] = now
            else:
                self._clean.pop(key, None)
            return bool(answer)

        return await self.fallback.run(remote, lambda local: local.allow(key, policy=policy))

    async def record_success(self, key: str, *, policy: BreakerPolicy) -> None:
        if key in self._clean:
            return
        await self.fallback.run(
            lambda: self._redis.async_client().delete(self._key(key)),
            lambda local: local.record_success(key, policy=policy),
        )

    async def record_failure(self, key: str, *, policy: BreakerPolicy) -> None:
        self._clean.pop(key, None)

        async def remote() -> None:
            args = [self.clock(), policy.failure_threshold, KEY_TTL_SECONDS]
            if failures := await self._redis.script(_RECORD_FAILURE, keys=[self._key(key)], args=args):
                _log_opened(key, failures)

        await self.fallback.run(remote, lambda local: local.record_failure(key, policy=policy))

    async def status(self, key: str, *, policy: BreakerPolicy) -> BreakerStatus:
        async def remote() -> BreakerStatus:
            values = await self._redis.async_client().hmget(self._key(key), _FIELDS)
            return _breaker_from(values).status(now=self.clock(), policy=policy)

        return await self.fallback.run(remote, lambda local: local.status(key, policy=policy))

    def statuses_sync(self, keys: list[str], *, policy: BreakerPolicy) -> dict[str, BreakerStatus]:
        def remote() -> dict[str, BreakerStatus]:
            pipe = self._redis.sync_client().pipeline(transaction=False)
            for key in keys:
                pipe.hmget(self._key(key), _FIELDS)
            now = self.clock()
            return {key: _breaker_from(values).status(now=now, policy=policy)
                    for key, values in zip(keys, pipe.execute())}

        return self.fallback.run_sync(remote, lambda local: local.statuses_sync(keys, policy=policy))

    async def reset(self, key: str) -> None:
        await self.fallback.run(
            lambda: self._redis.async_client().delete(self._key(key)), lambda local: local.reset(key)
        )

    async def aclose(self) -> None:
        await self._redis.aclose()


def breaker_store() -> BreakerStore:
    """The process's shared store: Redis when `REDIS_URL` is set, else in process."""
    return shared_store(local=LocalBreakerStore, remote=RedisBreakerStore)
