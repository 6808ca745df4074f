"""Where cached answers live: Redis when `REDIS_URL` is set, else Django's local cache.

Entries are namespaced by tenant, so clearing a tenant touches nothing of another's. Next to the
entries each tenant has an index of its keys (for counting and clearing) and its counters (hits,
semantic hits, misses, saved cost). A Redis that does not answer makes the cache a bypass for
that call (every lookup a miss, nothing stored), never a failed request.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal

from django.core.cache import caches

from kernel.redis_client import RedisConnections, RedisFallback, shared_store

# Saved cost is counted in units of 1e-8 USD (the 8 places of UsageRecord.cost_usd), as integers.
COST_UNIT = Decimal("0.00000001")
CLEAR_BATCH = 500


@dataclass(frozen=True)
class CacheStats:
    entries: int
    hits: int
    semantic_hits: int
    misses: int
    saved_cost_usd: Decimal

    @property
    def hit_rate(self) -> float | None:
        looked_up = self.hits + self.misses
        return round(self.hits / looked_up, 4) if looked_up else None

    def as_dict(self) -> dict:
        return {
            "entries": self.entries,
            "hits": self.hits,
            "semantic_hits": self.semantic_hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
            "saved_cost_usd": str(self.saved_cost_usd),
        }


def _units(cost: Decimal) -> int:
    return int((cost / COST_UNIT).to_integral_value())


class CacheStore:
    """The contract of a store. `entry` is a JSON-able dict; `hit` counts semantic hits too."""

    async def get(self, tenant_id: int, key: str) -> dict | None:
        raise NotImplementedError

    async def put(self, tenant_id: int, key: str, entry: dict, *, ttl: int) -> None:
        raise NotImplementedError

    async def count(self, tenant_id: int, *, hit: bool, semantic: bool = False, saved: Decimal = Decimal("0")) -> None:
        raise NotImplementedError

    async def stats(self, tenant_id: int) -> CacheStats:
        raise NotImplementedError

    async def clear(self, tenant_id: int) -> int:
        """Drop the tenant's entries (counters stay: they are history); returns how many."""
        raise NotImplementedError


class LocalCacheStore(CacheStore):
    """Django's local-memory cache for the entries; the key index and counters in process."""

    def __init__(self) -> None:
        self._cache = caches["default"]
        self._index: dict[int, dict[str, float]] = {}
        self._counters: dict[int, dict[str, int]] = {}

    def _key(self, tenant_id: int, key: str) -> str:
        return f"cache:{tenant_id}:e:{key}"

    def _live(self, tenant_id: int) -> dict[str, float]:
        now = time.time()
        index = self._index.setdefault(tenant_id, {})
        for key in [k for k, expires in index.items() if expires <= now]:
            del index[key]
        return index

    # LocMemCache never waits on I/O, so its sync methods are safe to call from the event loop.
    async def get(self, tenant_id: int, key: str) -> dict | None:
        raw = self._cache.get(self._key(tenant_id, key))
        return json.loads(raw) if raw is not None else None

    async def put(self, tenant_id: int, key: str, entry: dict, *, ttl: int) -> None:
        self._cache.set(self._key(tenant_id, key), json.dumps(entry), ttl)
        self._live(tenant_id)[key] = time.time() + ttl

    async def count(self, tenant_id: int, *, hit: bool, semantic: bool = False, saved: Decimal = Decimal("0")) -> None:
        counters = self._counters.setdefault(tenant_id, {})
        for name, step in _increments(hit=hit, semantic=semantic, saved=saved):
            counters[name] = counters.get(name, 0) + step

    async def stats(self, tenant_id: int) -> CacheStats:
        return _stats(len(self._live(tenant_id)), self._counters.get(tenant_id, {}))

    async def clear(self, tenant_id: int) -> int:
        index = self._live(tenant_id)
        self._cache.delete_many([self._key(tenant_id, key) for key in index])
        count = len(index)
        index.clear()
        return count


class BypassStore(CacheStore):
    """What the Redis store does while Redis does not answer: nothing is found, nothing kept."""

    async def get(self, tenant_id: int, key: str) -> dict | None:
        return None

    async def put(self, tenant_id: int, key: str, entry: dict, *, ttl: int) -> None:
        return None

    async def count(self, tenant_id: int, *, hit: bool, semantic: bool = False, saved: Decimal = Decimal("0")) -> None:
        return None

    async def stats(self, tenant_id: int) -> CacheStats:
        return _stats(0, {})

    async def clear(self, tenant_id: int) -> int:
        return 0


class RedisCacheStore(CacheStore):
    """Entries as strings with a TTL (`{prefix}:cache:{tenant}:e:{key}`), a sorted set of keys by
    expiry (`...:keys`) and a hash of counters (`...:stats`), shared by every replica."""

    def __init__(self, *, url: str, prefix: str, timeout: float = 0.5) -> None:
        self._prefix = prefix
        self._redis = RedisConnections(url, timeout=timeout)
        self.fallback: RedisFallback[BypassStore] = RedisFallback(what="the response cache", make_local=BypassStore)

    def _base(self, tenant_id: int) -> str:
        return f"{self._prefix}:cache:{tenant_id}"

    async def get(self, tenant_id: int, key: str) -> dict | None:
        async def remote() -> dict | None:
            raw = await self._redis.async_client().get(f"{self._base(tenant_id)}:e:{key}")
            return json.loads(raw) if raw is not None else None

        return await self.fallback.run(remote, lambda local: local.get(tenant_id, key))

    async def put(self, tenant_id: int, key: str, entry: dict, *, ttl: int) -> None:
        async def remote() -> None:
            base, now = self._base(tenant_id), time.time()
            pipe = self._redis.async_client().pipeline(transaction=True)
            pipe.set(f"{base}:e:{key}", json.dumps(entry), ex=ttl)
            pipe.zadd(f"{base}:keys", {key: now + ttl})
            pipe.zremrangebyscore(f"{base}:keys", "-inf", now)
            await pipe.execute()

        await self.fallback.run(remote, lambda local: local.put(tenant_id, key, entry, ttl=ttl))

    async def count(self, tenant_id: int, *, hit: bool, semantic: bool = False, saved: Decimal = Decimal("0")) -> None:
        async def remote() -> None:
            pipe = self._redis.async_client().pipeline(transaction=False)
            for name, step in _increments(hit=hit, semantic=semantic, saved=saved):
                pipe.hincrby(f"{self._base(tenant_id)}:stats", name, step)
            await pipe.execute()

        await self.fallback.run(remote, lambda local: local.count(tenant_id, hit=hit, semantic=semantic, saved=saved))

    async def stats(self, tenant_id: int) -> CacheStats:
        async def remote() -> CacheStats:
            base = self._base(tenant_id)
            pipe = self._redis.async_client().pipeline(transaction=False)
            pipe.zremrangebyscore(f"{base}:keys", "-inf", time.time())
            pipe.zcard(f"{base}:keys")
            pipe.hgetall(f"{base}:stats")
            _, entries, counters = await pipe.execute()
            return _stats(entries, {name: int(value) for name, value in counters.items()})

        return await self.fallback.run(remote, lambda local: local.stats(tenant_id))

    async def clear(self, tenant_id: int) -> int:
        async def remote() -> int:
            base, client = self._base(tenant_id), self._redis.async_client()
            cleared = 0
            # ZPOPMIN takes keys out of the index as they are deleted, so a clear running next
            # to new writes never drops the index entry of an answer it did not delete.
            while popped := await client.zpopmin(f"{base}:keys", CLEAR_BATCH):
                cleared += await client.delete(*(f"{base}:e:{key}" for key, _ in popped))
            return cleared

        return await self.fallback.run(remote, lambda local: local.clear(tenant_id))


def _increments(*, hit: bool, semantic: bool, saved: Decimal) -> list[tuple[str, int]]:
    if not hit:
        return [("misses", 1)]
    steps = [("hits", 1), ("saved_units", _units(saved))]
    if semantic:
        steps.append(("semantic_hits", 1))
    return steps


def _stats(entries: int, counters: dict[str, int]) -> CacheStats:
    return CacheStats(
        entries=entries,
        hits=counters.get("hits", 0),
        semantic_hits=counters.get("semantic_hits", 0),
        misses=counters.get("misses", 0),
        saved_cost_usd=(Decimal(counters.get("saved_units", 0)) * COST_UNIT).quantize(COST_UNIT),
    )


def cache_store() -> CacheStore:
    return shared_store(local=LocalCacheStore, remote=RedisCacheStore)
