"""Health of each deployment: success rate, latency and time to first token, as moving averages.

The lowest-latency strategy ranks deployments with `latencies`, and the admin shows the snapshots.
Like the breakers, the numbers live in Redis when `REDIS_URL` is set, so every replica ranks on
what all of them saw, and in process otherwise; a Redis that does not answer is replaced by the
in-process store until it does (see `kernel.redis_client.RedisFallback`).

The averages are exponentially weighted (EWMA, `new = old + alpha * (sample - old)`, the first
sample taken as is), so recent requests count most and no history needs to be kept.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kernel.loops import PerLoop, background
from kernel.redis_client import RedisConnections, RedisFallback, shared_store
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


@dataclass(frozen=True)
class _Sample:
    """One attempt, as counted: its error already cut, `at` its wall-clock time."""

    ok: bool
    latency_ms: float
    ttft_ms: float | None
    error: str
    at: float

    @classmethod
    def of(cls, *, ok: bool, latency_ms: float, ttft_ms: float | None, error: str, now: float) -> _Sample:
        return cls(ok, latency_ms, ttft_ms, "" if ok else error[:MAX_ERROR_CHARS], now)

    def args(self) -> tuple:
        return self.at, int(self.ok), self.latency_ms, "" if self.ttft_ms is None else self.ttft_ms, self.error


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

    `note` is `record` for the request path: it returns at once, and the sample is counted in the
    background (on Redis, together with the other samples of this loop's last few milliseconds).
    """

    async def record(
        self, key: str, *, ok: bool, latency_ms: float, ttft_ms: float | None = None, error: str = ""
    ) -> None:
        raise NotImplementedError

    def note(self, key: str, *, ok: bool, latency_ms: float, ttft_ms: float | None = None, error: str = "") -> None:
        raise NotImplementedError

    clock: Callable[[], float]

    def _sample(self, **sample) -> _Sample:
        return _Sample.of(**sample, now=self.clock())

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
        self.note(key, ok=ok, latency_ms=latency_ms, ttft_ms=ttft_ms, error=error)

    def note(self, key: str, *, ok: bool, latency_ms: float, ttft_ms: float | None = None, error: str = "") -> None:
        self.samples_apply(key, [self._sample(ok=ok, latency_ms=latency_ms, ttft_ms=ttft_ms, error=error)])

    def samples_apply(self, key: str, samples: list[_Sample]) -> None:
        """Count `samples`, in order (what the Redis script does with the same samples)."""
        alpha = self._alpha
        with self._lock:
            health = self._health.get(key, DeploymentHealth())
            for sample in samples:
                ok = sample.ok
                health = DeploymentHealth(
                    requests=health.requests + 1,
                    failures=health.failures + (0 if ok else 1),
                    success_rate=ewma(health.success_rate, 1.0 if ok else 0.0, alpha=alpha),
                    latency_ms=ewma(health.latency_ms, sample.latency_ms, alpha=alpha) if ok else health.latency_ms,
                    ttft_ms=health.ttft_ms if sample.ttft_ms is None else ewma(health.ttft_ms, sample.ttft_ms, alpha=alpha),
                    last_error=health.last_error if ok else sample.error,
                    last_error_at=health.last_error_at if ok else sample.at,
                )
            self._health[key] = health

    async def latencies(self, keys: list[str]) -> dict[str, float | None]:
        return {key: health.ranking_latency_ms for key, health in self.snapshots_sync(keys).items()}

    async def snapshot(self, key: str) -> DeploymentHealth:
        return self.snapshots_sync([key])[key]

    def snapshots_sync(self, keys: list[str]) -> dict[str, DeploymentHealth]:
        with self._lock:
            return {key: self._health.get(key, DeploymentHealth()) for key in keys}


# KEYS[1] the health hash; ARGV alpha, ttl, then five per sample, oldest first: its time, ok (1/0),
# latency_ms, ttft_ms ('' for none), error. Counts the samples in order in one step, so concurrent
# records from many replicas all count, and a loop's samples of a few milliseconds are one call.
_RECORD = """
local key = KEYS[1]
local alpha = tonumber(ARGV[1])
local kept = redis.call('HMGET', key, 'success_rate', 'latency_ms', 'ttft_ms')
local rate, latency, ttft = tonumber(kept[1]), tonumber(kept[2]), tonumber(kept[3])
local function ewma(old, sample)
  if old then return old + alpha * (sample - old) end
  return sample
end
local requests, failures = 0, 0
for i = 3, #ARGV, 5 do
  requests = requests + 1
  if ARGV[i + 1] == '1' then
    rate = ewma(rate, 1)
    latency = ewma(latency, tonumber(ARGV[i + 2]))
  else
    rate = ewma(rate, 0)
    failures = failures + 1
    redis.call('HSET', key, 'last_error', ARGV[i + 4], 'last_error_at', ARGV[i])
  end
  if ARGV[i + 3] ~= '' then ttft = ewma(ttft, tonumber(ARGV[i + 3])) end
end
redis.call('HINCRBY', key, 'requests', requests)
if failures > 0 then redis.call('HINCRBY', key, 'failures', failures) end
for field, value in pairs({success_rate = rate, latency_ms = latency, ttft_ms = ttft}) do
  redis.call('HSET', key, field, string.format('%.17g', value))
end
redis.call('EXPIRE', key, ARGV[2])
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


@dataclass
class _Pending:
    """One loop's samples not yet sent to Redis, per key, and whether their sender is running."""

    samples: dict[str, list[_Sample]] = field(default_factory=dict)
    sending: bool = False


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
        self._pending: PerLoop[_Pending] = PerLoop(_Pending)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:health:{key}"

    async def record(
        self, key: str, *, ok: bool, latency_ms: float, ttft_ms: float | None = None, error: str = ""
    ) -> None:
        await self._samples_send(key, [self._sample(ok=ok, latency_ms=latency_ms, ttft_ms=ttft_ms, error=error)])

    def note(self, key: str, *, ok: bool, latency_ms: float, ttft_ms: float | None = None, error: str = "") -> None:
        """The sample joins this loop's pending ones; the first of them starts their sender, which
        sends all that have come meanwhile, one script call per key, with the loop's next Redis
        call (`RedisConnections.script(deferred=True)`, at most `SCRIPT_DEFER_SECONDS` later)."""
        pending = self._pending.get()
        pending.samples.setdefault(key, []).append(
            self._sample(ok=ok, latency_ms=latency_ms, ttft_ms=ttft_ms, error=error))
        if not pending.sending:
            pending.sending = True
            background(self._pending_send(pending), what="deployment health record")

    async def _pending_send(self, pending: _Pending) -> None:
        try:
            while pending.samples:
                samples, pending.samples = pending.samples, {}
                await asyncio.gather(*(self._samples_send(key, batch) for key, batch in samples.items()))
        finally:
            pending.sending = False

    async def _samples_send(self, key: str, samples: list[_Sample]) -> None:
        async def remote() -> None:
            args = [self._alpha, KEY_TTL_SECONDS, *(arg for sample in samples for arg in sample.args())]
            # Statistics nobody waits for: they go out with this loop's next Redis call.
            await self._redis.script(_RECORD, keys=[self._key(key)], args=args, deferred=True)

        async def local(store: LocalHealthStore) -> None:
            store.samples_apply(key, samples)

        await self.fallback.run(remote, local)

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
