"""Circuit breakers: the same state machine in process and on the real Redis, and Redis outages."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid

import pytest
import redis
from django.conf import settings

from routing.breakers import (
    BreakerPolicy,
    BreakerStatus,
    LocalBreakerStore,
    RedisBreakerStore,
    breaker_store,
)
from tests.conftest import free_port

POLICY = BreakerPolicy(failure_threshold=3, cooldown_seconds=30.0)
KEY = "12"


class Clock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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


@pytest.fixture
async def make_redis_store(redis_prefix, clock):
    """Redis stores on the test's prefix (several of them stand for several processes)."""
    stores: list[RedisBreakerStore] = []

    def make(**options) -> RedisBreakerStore:
        options = {"url": settings.REDIS_URL, "prefix": redis_prefix, "clock": clock, "timeout": 5.0,
                   **options}
        stores.append(RedisBreakerStore(**options))
        return stores[-1]

    yield make
    for store in stores:
        await store.aclose()


@pytest.fixture(params=["local", "redis"])
async def store(request, clock):
    if request.param == "local":
        yield LocalBreakerStore(clock=clock)
        return
    prefix = request.getfixturevalue("redis_prefix")
    # A long connect timeout: a loaded machine must not send a concurrency test to the fallback.
    store = RedisBreakerStore(url=settings.REDIS_URL, prefix=prefix, clock=clock, timeout=5.0)
    yield store
    await store.aclose()
    assert store.fallback.local_calls == 0, "the Redis store answered from its fallback"


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: connection refused


async def fail(store, times: int, key: str = KEY) -> None:
    for _ in range(times):
        await store.record_failure(key, policy=POLICY)


async def open_breaker(store, clock: Clock, key: str = KEY) -> None:
    await fail(store, POLICY.failure_threshold, key)
    assert (await store.status(key, policy=POLICY)).state == "open"


async def half_open(store, clock: Clock, key: str = KEY) -> None:
    """Open the breaker, wait out the cooldown, and take the probe."""
    await open_breaker(store, clock, key)
    clock.advance(POLICY.cooldown_seconds)
    assert await store.allow(key, policy=POLICY) is True


# --- the state machine, on both stores ---------------------------------------------------------
async def test_unknown_key_is_closed(store):
    assert await store.allow("nobody", policy=POLICY) is True
    assert await store.status("nobody", policy=POLICY) == BreakerStatus("closed", 0, None, 0.0)


async def test_closed_below_threshold(store):
    await fail(store, POLICY.failure_threshold - 1)
    assert await store.allow(KEY, policy=POLICY) is True
    assert await store.status(KEY, policy=POLICY) == BreakerStatus("closed", 2, None, 0.0)


async def test_opens_at_threshold_and_denies_during_cooldown(store, clock):
    opened_at = clock.now
    await fail(store, POLICY.failure_threshold)
    assert await store.status(KEY, policy=POLICY) == BreakerStatus("open", 3, opened_at, 30.0)
    assert await store.allow(KEY, policy=POLICY) is False
    clock.advance(29.5)
    assert await store.allow(KEY, policy=POLICY) is False
    assert (await store.status(KEY, policy=POLICY)).retry_in == pytest.approx(0.5)


async def test_half_opens_after_cooldown_with_exactly_one_probe(store, clock):
    await open_breaker(store, clock)
    clock.advance(POLICY.cooldown_seconds)
    results = [await store.allow(KEY, policy=POLICY) for _ in range(5)]
    assert results == [True, False, False, False, False]
    status = await store.status(KEY, policy=POLICY)
    assert (status.state, status.retry_in) == ("half_open", 0.0)


async def test_probe_success_closes(store, clock):
    await half_open(store, clock)
    await store.record_success(KEY, policy=POLICY)
    assert await store.status(KEY, policy=POLICY) == BreakerStatus("closed", 0, None, 0.0)
    assert await store.allow(KEY, policy=POLICY) is True


async def test_probe_failure_reopens_with_fresh_cooldown(store, clock):
    await half_open(store, clock)
    clock.advance(2.0)
    reopened_at = clock.now
    await store.record_failure(KEY, policy=POLICY)
    assert await store.status(KEY, policy=POLICY) == BreakerStatus("open", 4, reopened_at, 30.0)
    clock.advance(29.9)
    assert await store.allow(KEY, policy=POLICY) is False
    clock.advance(0.1)
    assert await store.allow(KEY, policy=POLICY) is True
    assert await store.allow(KEY, policy=POLICY) is False


async def test_lost_probe_is_replaced_after_cooldown(store, clock):
    await half_open(store, clock)
    clock.advance(29.9)
    assert await store.allow(KEY, policy=POLICY) is False
    clock.advance(0.1)
    assert await store.allow(KEY, policy=POLICY) is True
    assert await store.allow(KEY, policy=POLICY) is False


async def test_success_resets_failure_count(store):
    await fail(store, 2)
    await store.record_success(KEY, policy=POLICY)
    await fail(store, 2)
    assert await store.status(KEY, policy=POLICY) == BreakerStatus("closed", 2, None, 0.0)
    assert await store.allow(KEY, policy=POLICY) is True


async def test_failures_while_open_keep_the_cooldown(store, clock):
    opened_at = clock.now
    await open_breaker(store, clock)
    clock.advance(10.0)
    await fail(store, 2)
    assert await store.status(KEY, policy=POLICY) == BreakerStatus("open", 5, opened_at, 20.0)


async def test_status_does_not_transition(store, clock):
    await open_breaker(store, clock)
    clock.advance(POLICY.cooldown_seconds + 5)
    for _ in range(2):
        status = await store.status(KEY, policy=POLICY)
        assert (status.state, status.retry_in) == ("open", 0.0)
    assert store.statuses_sync([KEY], policy=POLICY)[KEY].state == "open"
    assert await store.allow(KEY, policy=POLICY) is True


async def test_status_and_statuses_sync_agree(store, clock):
    await fail(store, 1, "a")
    await open_breaker(store, clock, "b")
    await half_open(store, clock, "c")
    keys = ["a", "b", "c", "unknown"]
    expected = {key: await store.status(key, policy=POLICY) for key in keys}
    assert store.statuses_sync(keys, policy=POLICY) == expected
    assert [expected[key].state for key in keys] == ["closed", "open", "half_open", "closed"]


async def test_reset(store, clock):
    await open_breaker(store, clock)
    await store.reset(KEY)
    assert await store.status(KEY, policy=POLICY) == BreakerStatus("closed", 0, None, 0.0)
    assert await store.allow(KEY, policy=POLICY) is True


async def test_concurrent_allow_on_half_open_lets_one_through(store, clock):
    await open_breaker(store, clock)
    clock.advance(POLICY.cooldown_seconds)
    results = await asyncio.gather(*[store.allow(KEY, policy=POLICY) for _ in range(20)])
    assert results.count(True) == 1


async def test_keys_are_independent(store, clock):
    await open_breaker(store, clock, "a")
    assert await store.allow("b", policy=POLICY) is True
    assert (await store.status("b", policy=POLICY)).state == "closed"


# --- Redis: shared between processes -----------------------------------------------------------
async def test_two_redis_stores_share_state(make_redis_store, clock):
    one, two = make_redis_store(), make_redis_store()
    await fail(one, POLICY.failure_threshold)
    assert await two.allow(KEY, policy=POLICY) is False
    assert two.statuses_sync([KEY], policy=POLICY) == {KEY: await one.status(KEY, policy=POLICY)}
    clock.advance(POLICY.cooldown_seconds)
    assert await two.allow(KEY, policy=POLICY) is True
    assert await one.allow(KEY, policy=POLICY) is False
    await two.record_success(KEY, policy=POLICY)
    assert await one.allow(KEY, policy=POLICY) is True


async def test_a_success_after_a_clean_allow_sends_nothing_to_redis(make_redis_store, redis_prefix):
    store = make_redis_store()
    assert await store.allow(KEY, policy=POLICY) is True  # no breaker hash: nothing to reset
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.hset(f"{redis_prefix}:breaker:{KEY}", "failures", 1)  # a marker the DEL would remove
        await store.record_success(KEY, policy=POLICY)
        assert client.exists(f"{redis_prefix}:breaker:{KEY}")  # no DEL was sent
    finally:
        client.close()


async def test_a_failure_after_a_clean_allow_is_still_reset_by_a_success(make_redis_store):
    store = make_redis_store()
    assert await store.allow(KEY, policy=POLICY) is True
    await fail(store, POLICY.failure_threshold - 1)
    await store.record_success(KEY, policy=POLICY)  # the failures were recorded here: DEL
    await store.record_failure(KEY, policy=POLICY)
    assert await store.allow(KEY, policy=POLICY) is True  # one failure, not the threshold


async def test_another_processs_failures_are_reset_by_the_next_success_that_saw_them(make_redis_store, clock):
    one, two = make_redis_store(), make_redis_store()
    assert await one.allow(KEY, policy=POLICY) is True  # clean
    await fail(two, POLICY.failure_threshold - 1)  # in another process, meanwhile
    await one.record_success(KEY, policy=POLICY)  # no round trip: the failures stay
    clock.advance(one.clean_seconds)
    assert await one.allow(KEY, policy=POLICY) is True  # asks Redis again, and sees the hash
    await one.record_success(KEY, policy=POLICY)  # resets them
    await two.record_failure(KEY, policy=POLICY)
    assert await two.allow(KEY, policy=POLICY) is True  # one failure, not the threshold


async def test_a_clean_key_is_let_through_without_redis_for_clean_seconds(make_redis_store, clock):
    one, two = make_redis_store(), make_redis_store()
    assert await one.allow(KEY, policy=POLICY) is True  # no breaker hash: clean
    await fail(two, POLICY.failure_threshold)  # another process opens the breaker
    clock.advance(one.clean_seconds * 0.9)
    assert await one.allow(KEY, policy=POLICY) is True  # not asked again yet: up to clean_seconds late
    clock.advance(one.clean_seconds * 0.2)
    assert await one.allow(KEY, policy=POLICY) is False  # asks Redis again: open


async def test_a_failure_of_its_own_forgets_the_clean_key_at_once(make_redis_store, clock):
    one, two = make_redis_store(), make_redis_store()
    assert await one.allow(KEY, policy=POLICY) is True
    await fail(two, POLICY.failure_threshold - 1)
    await one.record_failure(KEY, policy=POLICY)  # the threshold's failure, seen by this process
    assert await one.allow(KEY, policy=POLICY) is False  # no wait for clean_seconds


async def test_clean_seconds_zero_asks_redis_every_time(make_redis_store):
    one, two = make_redis_store(clean_seconds=0), make_redis_store()
    assert await one.allow(KEY, policy=POLICY) is True
    await fail(two, POLICY.failure_threshold)
    assert await one.allow(KEY, policy=POLICY) is False


async def test_redis_keys_are_prefixed_and_expire(make_redis_store, redis_prefix):
    store = make_redis_store()
    await store.record_failure(KEY, policy=POLICY)
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        assert 0 < client.ttl(f"{redis_prefix}:breaker:{KEY}") <= 24 * 3600
    finally:
        client.close()


# --- Redis that does not answer ----------------------------------------------------------------
async def test_dead_redis_falls_back_to_local(clock, caplog):
    store = RedisBreakerStore(url=closed_port_url(), prefix="gw-test", clock=clock, retry_after=0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="routing.breakers"):
        await fail(store, POLICY.failure_threshold)
        assert await store.allow(KEY, policy=POLICY) is False
        assert store.statuses_sync([KEY], policy=POLICY)[KEY].state == "open"
        clock.advance(POLICY.cooldown_seconds)
        assert [await store.allow(KEY, policy=POLICY) for _ in range(3)] == [True, False, False]
        await store.reset(KEY)
        assert (await store.status(KEY, policy=POLICY)).state == "closed"
    assert time.monotonic() - started < 1.5
    outage_warnings = [r for r in caplog.records if "Redis failed" in r.getMessage()]
    assert len(outage_warnings) == 1
    assert (store.fallback.redis_errors, store.fallback.local_calls) == (10, 10)
    await store.aclose()


async def test_dead_redis_is_tried_again_only_after_retry_after(clock):
    store = RedisBreakerStore(url=closed_port_url(), prefix="gw-test", clock=clock, retry_after=60)
    for _ in range(5):
        assert await store.allow(KEY, policy=POLICY) is True
    assert (store.fallback.redis_errors, store.fallback.local_calls) == (1, 5)
    await store.aclose()


async def test_silent_redis_costs_one_timeout_per_retry_after(clock):
    """A Redis that accepts connections but never answers (a hung server, a black-holed route)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        store = RedisBreakerStore(url=url, prefix="gw-test", clock=clock, timeout=0.2, retry_after=60)
        started = time.monotonic()
        assert await store.allow(KEY, policy=POLICY) is True
        first = time.monotonic() - started
        await fail(store, POLICY.failure_threshold)
        assert await store.allow(KEY, policy=POLICY) is False
        rest = time.monotonic() - started - first
        await store.aclose()
    assert 0.15 < first < 1.0 and rest < 0.1
    assert (store.fallback.redis_errors, store.fallback.local_calls) == (1, 5)


class Proxy:
    """A TCP forwarder to the test Redis that can be stopped and started: a Redis outage."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    @staticmethod
    async def _pipe(reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def test_store_returns_to_redis_when_it_answers_again(make_redis_store, redis_prefix, clock):
    proxy = Proxy(redis.connection.parse_url(settings.REDIS_URL).get("port", 6379))
    db = redis.connection.parse_url(settings.REDIS_URL).get("db", 0)
    flaky = make_redis_store(url=f"redis://127.0.0.1:{proxy.port}/{db}", retry_after=0)
    direct = make_redis_store()

    await flaky.record_failure("up", policy=POLICY)  # nothing listens yet: in process
    assert (await direct.status("up", policy=POLICY)).failures == 0
    await proxy.start()
    await fail(flaky, POLICY.failure_threshold, "up")  # on Redis, the outage's local state dropped
    assert (await direct.status("up", policy=POLICY)).failures == 3
    await proxy.stop()  # pooled connections cut
    assert await flaky.allow("up", policy=POLICY) is True  # local again, no exception
    await proxy.start()
    assert await flaky.allow("up", policy=POLICY) is False
    assert flaky.fallback.local_calls == 2
    await proxy.stop()


# --- wiring ------------------------------------------------------------------------------------
def test_default_policy_reads_settings(settings):
    settings.GATEWAY_BREAKER_FAILURE_THRESHOLD = 7
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = 12.5
    assert BreakerPolicy.default() == BreakerPolicy(failure_threshold=7, cooldown_seconds=12.5)


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        BreakerPolicy(failure_threshold=0, cooldown_seconds=30)


def test_breaker_store_follows_settings(settings):
    settings.REDIS_URL = ""
    local = breaker_store()
    assert isinstance(local, LocalBreakerStore) and breaker_store() is local
    settings.REDIS_URL = "redis://127.0.0.1:6379/1"
    assert isinstance(breaker_store(), RedisBreakerStore) and breaker_store() is breaker_store()
