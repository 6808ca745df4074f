"""Health of each deployment: success rate, latency and time to first token, as moving averages.

The lowest-latency strategy ranks deployments with `latencies`, and the admin shows the snapshots.
Like the breakers, the numbers live in Redis when `REDIS_URL` is set, so every replica ranks on
what all of them saw, and in process otherwise; a Redis that does not answer is replaced by the
in-process store until it does (see `gateway_site.redis_client.RedisFallback`).

The averages are exponentially weighted (EWMA, `new = old + alpha * (sample - old)`, the first
sample taken as is), so recent requests count most and no history needs to be kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway_site.redis_client import RedisConnections, RedisFallback, shared_store
from routing.breakers import KEY_TTL_SECONDS

EWMA_ALPHA = 0.1
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class DeploymentHealth:
    requests: int = 0
    failures: int = 0
    success_rate: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    last_error: str = ""
    last_error_at: float | None = None

    @property
    def ranking_latency_ms(self) -> float | None:
        """What the lowest-latency strategy compares: time to first token when known."""
        return self.ttft_ms if self.ttft_ms is not None else self.latency_ms


def ewma(old: float | None, sample: float, *, alpha: float) -> float:
    return sample if old is None else old + alpha * (sample - old)


class HealthStore:
    """Where deployment health lives. Every backend keeps the same numbers:

    - `record` one attempt: `requests` +1; the success-rate EWMA takes 1 or 0; a success feeds
      `latency_ms` (total latency of the attempt); `ttft_ms`, when given, feeds the time-to-first-
      token EWMA, also for a stream that failed after its first token; a failure counts in
      `failures` and sets `last_error` (cut to 300 characters; the caller passes a message without
      secrets, such as the error class and a short text) and `last_error_at` (wall clock).
    - `latencies`: per key, the ttft EWMA when known, else the latency EWMA, else None; one round
      trip for all keys.
    - `snapshot` and `snapshots_sync` (for the admin): everything above; unknown keys read empty.
    """

    async def record(
        self, key: str, *, ok: bool, latency_ms: float, ttft_ms: float | None = None, error: str = ""
    ) -> None:
        raise NotImplementedError

    async def latencies(self, keys: list[str]) -> dict[str, float | None]:
        raise NotImplementedError

    async def snapshot(self, key: str) -> DeploymentHealth:
        raise NotImplementedError

    def snapshots_sync(self, keys: list[str]) -> dict[str, DeploymentHealth]:
        raise NotImplementedError


class LocalHealthStore(HealthStore):
    """Health in this process's memory: the embedded mode, and the fallback of the Redis store."""

    def __init__(self, *, clock: Callable[[], float] = time.time, alpha: float = EWMA_ALPHA) -> None:
        self.clock = clock
        self._alpha = alpha
        self._health: dict[str, DeploymentHealth] = {}
        self._lock = threading.Lock()

    async def record(
        self, key: str, *, ok: bool, latency_ms: float, ttft_ms: float | None = None, error: str = ""
    ) -> None:
        now, alpha = self.clock(), self._alpha
        with self._lock:
            old = self._health.get(key, DeploymentHealth())
            self._health[key] = DeploymentHealth(
                requests=old.requests + 1,
                failures=old.failures + (0 if ok else 1),
                success_rate=ewma(old.success_rate, 1.0 if ok else 0.0, alpha=alpha),
                latency_ms=ewma(old.latency_ms, latency_ms, alpha=alpha) if ok else old.latency_ms,
                ttft_ms=old.ttft_ms if ttft_ms is None else ewma(old.ttft_ms, ttft_ms, alpha=alpha),
                last_error=old.last_error if ok else error[:MAX_ERROR_CHARS],
                last_error_at=old.last_error_at if ok else now,
            )

    async def latencies(self, keys: list[str]) -> dict[str, float | None]:
        return {key: health.ranking_latency_ms for key, health in self.snapshots_sync(keys).items()}

    async def snapshot(self, key: str) -> DeploymentHealth:
        return self.snapshots_sync([key])[key]

    def snapshots_sync(self, keys: list[str]) -> dict[str, DeploymentHealth]:
        with self._lock:
            return {key: self._health.get(key, DeploymentHealth()) for key in keys}


# KEYS[1] the health hash; ARGV now, ok (1/0), latency_ms, ttft_ms ('' for none), error, alpha,
# ttl. Updates every average in one step, so concurrent records from many replicas all count.
_RECORD = """
local key = KEYS[1]
local alpha = tonumber(ARGV[6])
local function ewma(field, sample)
  local old = tonumber(redis.call('HGET', key, field))
  local new = sample
  if old then new = old + alpha * (sample - old) end
  redis.call('HSET', key, field, string.format('%.17g', new))
end
redis.call('HINCRBY', key, 'requests', 1)
if ARGV[2] == '1' then
  ewma('success_rate', 1)
  ewma('latency_ms', tonumber(ARGV[3]))
else
  ewma('success_rate', 0)
  redis.call('HINCRBY', key, 'failures', 1)
  redis.call('HSET', key, 'last_error', ARGV[5], 'last_error_at', ARGV[1])
end
if ARGV[4] ~= '' then ewma('ttft_ms', tonumber(ARGV[4])) end
redis.call('EXPIRE', key, ARGV[7])
return 1
"""


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _health_from(fields: dict[str, str]) -> DeploymentHealth:
    return DeploymentHealth(
        requests=int(fields.get("requests", 0)),
        failures=int(fields.get("failures", 0)),
        success_rate=_float(fields.get("success_rate")),
        latency_ms=_float(fields.get("latency_ms")),
        ttft_ms=_float(fields.get("ttft_ms")),
        last_error=fields.get("last_error", ""),
        last_error_at=_float(fields.get("last_error_at")),
    )


class RedisHealthStore(HealthStore):
    """Health in Redis, one hash per key (`{prefix}:health:{key}`), updated by one Lua script."""

    def __init__(
        self, *, url: str, prefix: str, clock: Callable[[], float] = time.time,
        alpha: float = EWMA_ALPHA, retry_after: float = 1.0, timeout: float = 0.5,
    ) -> None:
        self.clock, self._alpha, self._prefix = clock, alpha, prefix
        self._redis = RedisConnections(url, timeout=timeout)
        self.fallback: RedisFallback[LocalHealthStore] = RedisFallback(
            what="deployment health", make_local=lambda: LocalHealthStore(clock=clock, alpha=alpha),
            retry_after=retry_after,
        )

    def _key(self, key: str) -> str:
        return f"{self._prefix}:health:{key}"

    async def record(
        self, key: str, *, ok: bool, latency_ms: float, ttft_ms: float | None = None, error: str = ""
    ) -> None:
        async def remote() -> None:
            args = [self.clock(), int(ok), latency_ms, "" if ttft_ms is None else ttft_ms,
                    "" if ok else error[:MAX_ERROR_CHARS], self._alpha, KEY_TTL_SECONDS]
            # Statistics nobody waits for: they go out with this loop's next Redis call.
            await self._redis.script(_RECORD, keys=[self._key(key)], args=args, deferred=True)

        await self.fallback.run(
            remote,
            lambda local: local.record(key, ok=ok, latency_ms=latency_ms, ttft_ms=ttft_ms, error=error),
        )

    async def latencies(self, keys: list[str]) -> dict[str, float | None]:
        async def remote() -> dict[str, float | None]:
            async with self._redis.async_client().pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(self._key(key), ["ttft_ms", "latency_ms"])
                rows = await pipe.execute()
            return {key: _float(ttft or latency) for key, (ttft, latency) in zip(keys, rows)}

        return await self.fallback.run(remote, lambda local: local.latencies(keys))

    async def snapshot(self, key: str) -> DeploymentHealth:
        async def remote() -> DeploymentHealth:
            return _health_from(await self._redis.async_client().hgetall(self._key(key)))

        return await self.fallback.run(remote, lambda local: local.snapshot(key))

    def snapshots_sync(self, keys: list[str]) -> dict[str, DeploymentHealth]:
        def remote() -> dict[str, DeploymentHealth]:
            pipe = self._redis.sync_client().pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(self._key(key))
            return {key: _health_from(fields) for key, fields in zip(keys, pipe.execute())}

        return self.fallback.run_sync(remote, lambda local: local.snapshots_sync(keys))

    async def aclose(self) -> None:
        await self._redis.aclose()


def health_store() -> HealthStore:
    """The process's shared store: Redis when `REDIS_URL` is set, else in process."""
    return shared_store(local=LocalHealthStore, remote=RedisHealthStore)
