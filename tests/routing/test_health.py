"""Deployment health: the same moving averages in process and on the real Redis, and Redis outages."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
from django.conf import settings

from routing.health import (
    DeploymentHealth,
    LocalHealthStore,
    RedisHealthStore,
    health_store,
)
from kernel.loops import background_wait
from tests.conftest import free_port

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def redis_prefix():
    """A prefix of its own per test, and its keys deleted afterwards."""
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["local", "redis"])
async def store(request, clock):
    if request.param == "local":
        yield LocalHealthStore(clock=clock)
        return
    prefix = request.getfixturevalue("redis_prefix")
    # A long connect timeout: a loaded machine must not send a concurrency test to the fallback.
    store = RedisHealthStore(url=settings.REDIS_URL, prefix=prefix, clock=clock, timeout=5.0)
    yield store
    await store.aclose()
    assert store.fallback.local_calls == 0, "the Redis store answered from its fallback"


async def record_sequence(store, key: str = "12") -> None:
    await store.record(key, ok=True, latency_ms=100)
    await store.record(key, ok=True, latency_ms=200)
    await store.record(key, ok=False, latency_ms=999, error="TimeoutError: upstream took 999 ms")
    await store.record(key, ok=True, latency_ms=300)


async def test_unknown_key_is_empty(store):
    assert await store.snapshot("nobody") == DeploymentHealth(
        requests=0, failures=0, success_rate=None, latency_ms=None, ttft_ms=None,
        last_error="", last_error_at=None,
    )


async def test_ewma_after_a_known_sequence(store):
    await record_sequence(store)
    health = await store.snapshot("12")
    assert (health.requests, health.failures) == (4, 1)
    # success: 1, 1, then 1 + 0.1 * (0 - 1) = 0.9, then 0.9 + 0.1 * (1 - 0.9) = 0.91
    assert health.success_rate == pytest.approx(0.91)
    # latency of successes only: 100, 100 + 0.1 * 100 = 110, then 110 + 0.1 * (300 - 110) = 129
    assert health.latency_ms == pytest.approx(129.0)
    assert health.ttft_ms is None
    assert (health.last_error, health.last_error_at) == ("TimeoutError: upstream took 999 ms", NOW)


async def test_first_failure_sets_rate_to_zero(store):
    await store.record("12", ok=False, latency_ms=5, error="ProviderError: 503")
    health = await store.snapshot("12")
    assert (health.success_rate, health.latency_ms, health.failures) == (0.0, None, 1)


async def test_ttft_ewma_and_latencies_prefer_it(store):
    await store.record("stream", ok=True, latency_ms=1000, ttft_ms=50)
    await store.record("stream", ok=True, latency_ms=800, ttft_ms=150)
    await store.record("plain", ok=True, latency_ms=400)
    await store.record("failing", ok=False, latency_ms=10, error="ConnectError: refused")
    health = await store.snapshot("stream")
    assert (health.ttft_ms, health.latency_ms) == (pytest.approx(60.0), pytest.approx(980.0))
    assert await store.latencies(["stream", "plain", "failing", "unknown"]) == {
        "stream": pytest.approx(60.0), "plain": pytest.approx(400.0), "failing": None, "unknown": None,
    }
    assert await store.latencies([]) == {}


async def test_last_error_is_capped_and_kept_after_success(store, clock):
    await store.record("12", ok=False, latency_ms=1, error="x" * 1000)
    clock.now += 60
    await store.record("12", ok=True, latency_ms=1)
    health = await store.snapshot("12")
    assert (health.last_error, health.last_error_at) == ("x" * 300, NOW)


async def test_snapshots_sync_equal_async_snapshots(store):
    await record_sequence(store, "a")
    await store.record("b", ok=True, latency_ms=42, ttft_ms=7)
    keys = ["a", "b", "unknown"]
    assert store.snapshots_sync(keys) == {key: await store.snapshot(key) for key in keys}


async def test_concurrent_records_all_count(store):
    await asyncio.gather(*[store.record("12", ok=i % 2 == 0, latency_ms=100) for i in range(50)])
    health = await store.snapshot("12")
    assert (health.requests, health.failures, health.latency_ms) == (50, 25, pytest.approx(100.0))


async def test_noted_samples_count_as_recorded_ones_in_order(store, clock):
    """`note` (the request path's) returns at once; its samples, counted in the background, come to
    the same figures as `record` of the same sequence."""
    store.note("12", ok=True, latency_ms=100)
    store.note("12", ok=True, latency_ms=200, ttft_ms=20)
    clock.now += 5
    store.note("12", ok=False, latency_ms=999, error="x" * 1000)
    store.note("12", ok=True, latency_ms=300, ttft_ms=40)
    store.note("other", ok=True, latency_ms=7)
    await background_wait()

    health = await store.snapshot("12")
    assert (health.requests, health.failures) == (4, 1)
    assert health.success_rate == pytest.approx(0.91)
    assert health.latency_ms == pytest.approx(129.0)
    assert health.ttft_ms == pytest.approx(22.0)
    assert (health.last_error, health.last_error_at) == ("x" * 300, NOW + 5)
    assert (await store.snapshot("other")).latency_ms == pytest.approx(7.0)


async def test_a_loops_noted_samples_go_to_redis_together(redis_prefix, clock):
    """A burst of samples is a couple of script calls, not one per request."""
    store = RedisHealthStore(url=settings.REDIS_URL, prefix=redis_prefix, clock=clock, timeout=5.0)
    connections = store._redis
    calls = []
    script = connections.script

    async def counted(source, *, keys, args, deferred=False):
        calls.append(keys)
        return await script(source, keys=keys, args=args, deferred=deferred)

    connections.script = counted
    for i in range(200):
        store.note("12", ok=i % 4 != 0, latency_ms=100, error="ProviderError: 503")
        if i % 20 == 0:
            await asyncio.sleep(0)  # requests come and go meanwhile
    await background_wait()

    health = await store.snapshot("12")
    assert (health.requests, health.failures) == (200, 50)
    # Two or three here (the first sample's call, then what came while it waited); one more per
    # 50 ms the loop might stall on a loaded machine; one per sample before.
    assert len(calls) < 10, calls
    assert store.fallback.local_calls == 0
    await store.aclose()


async def test_noted_samples_are_counted_in_process_while_redis_is_down(clock):
    store = RedisHealthStore(url=f"redis://127.0.0.1:{free_port()}/0", prefix="down", clock=clock, timeout=0.2)
    store.note("12", ok=True, latency_ms=100)
    store.note("12", ok=False, latency_ms=5, error="ConnectError: refused")
    await background_wait()

    health = await store.snapshot("12")
    assert (health.requests, health.failures, health.latency_ms) == (2, 1, pytest.approx(100.0))
    await store.aclose()


async def test_two_redis_stores_share_health(redis_prefix, clock):
    one = RedisHealthStore(url=settings.REDIS_URL, prefix=redis_prefix, clock=clock)
    two = RedisHealthStore(url=settings.REDIS_URL, prefix=redis_prefix, clock=clock)
    await one.record("12", ok=True, latency_ms=100)
    await two.record("12", ok=True, latency_ms=200)
    assert (await one.snapshot("12")).latency_ms == pytest.approx(110.0)
    assert await two.latencies(["12"]) == {"12": pytest.approx(110.0)}
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert 0 < client.ttl(f"{redis_prefix}:health:12") <= 24 * 3600
    client.close()
    await one.aclose()
    await two.aclose()


async def test_dead_redis_falls_back_to_local(clock):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: connection refused
    store = RedisHealthStore(url=url, prefix="gw-test", clock=clock, retry_after=0)
    started = time.monotonic()
    await record_sequence(store)
    assert (await store.snapshot("12")).latency_ms == pytest.approx(129.0)
    assert await store.latencies(["12", "unknown"]) == {"12": pytest.approx(129.0), "unknown": None}
    assert store.snapshots_sync(["12"])["12"].requests == 4
    assert time.monotonic() - started < 1.5
    assert (store.fallback.redis_errors, store.fallback.local_calls) == (7, 7)
    await store.aclose()


def test_health_store_follows_settings(settings):
    settings.REDIS_URL = ""
    assert isinstance(health_store(), LocalHealthStore) and health_store() is health_store()
    settings.REDIS_URL = "redis://127.0.0.1:6379/1"
    assert isinstance(health_store(), RedisHealthStore) and health_store() is health_store()
