"""Rate limits: the same token buckets in process and on the real Redis, queueing, and headers."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest
import redis
from django.conf import settings

from accounting.ratelimits import (
    Decision,
    Limit,
    LimitState,
    LocalRateLimitStore,
    RedisRateLimitStore,
    acquire_waiting,
    duration_header,
    rate_limit_store,
    ratelimit_headers,
)
from tests.conftest import free_port

RPM = Limit("key:12:rpm", "requests", 10)  # one request per 6 s
TPM = Limit("key:12:tpm", "tokens", 600)  # ten tokens per second
TENANT_RPM = Limit("tenant:3:rpm", "requests", 100)


class Clock:
    """Seconds that move only when a test says so."""

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
    """The test's own prefix (from the autouse fixture), and its keys deleted afterwards."""
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    prefix = settings.GATEWAY_REDIS_PREFIX
    yield prefix
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def make_redis_store(redis_prefix):
    """Redis stores on the test's prefix (several of them stand for several processes)."""
    stores: list[RedisRateLimitStore] = []

    def make(**options) -> RedisRateLimitStore:
        # A long connect timeout: these tests are about shared counting, and a loaded CI machine once
        # took over the default 0.5 s to open 64 connections at once (the store then, rightly,
        # counted in process).
        options = {"url": settings.REDIS_URL, "prefix": redis_prefix, "timeout": 5.0, **options}
        stores.append(RedisRateLimitStore(**options))
        return stores[-1]

    yield make
    for store in stores:
        await store.aclose()
        assert store.fallback.local_calls == 0, "the Redis store answered from its fallback"


@pytest.fixture(params=["local", "redis"])
def make_store(request):
    """`make_store(clock)`: a store of the parametrized backend on that clock."""
    if request.param == "local":
        return lambda clock: LocalRateLimitStore(clock=clock)
    make_redis = request.getfixturevalue("make_redis_store")
    return lambda clock: make_redis(clock=clock)


@pytest.fixture
def store(make_store, clock):
    return make_store(clock)


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: connection refused


def state_of(decision: Decision, limit: Limit) -> LimitState:
    return next(state for state in decision.limits if state.limit == limit)


async def take(store, *limits: Limit, requests: int = 1, tokens: int = 0) -> Decision:
    amounts = {limit.name: requests if limit.kind == "requests" else tokens for limit in limits}
    return await store.acquire(list(limits), amounts)


# --- the buckets, on both stores ---------------------------------------------------------------
async def test_unknown_bucket_is_full(store):
    assert store.states_sync([RPM, TPM]) == {
        RPM.name: LimitState(RPM, 10, 0.0), TPM.name: LimitState(TPM, 600, 0.0),
    }


async def test_burst_up_to_capacity_then_refusal(store):
    decisions = [await take(store, RPM) for _ in range(10)]
    assert all(decision.allowed for decision in decisions)
    assert [state_of(d, RPM).remaining for d in decisions] == list(range(9, -1, -1))
    assert state_of(decisions[0], RPM).reset_seconds == pytest.approx(6.0)

    refused = await take(store, RPM)
    assert refused == Decision(False, [LimitState(RPM, 0, pytest.approx(60.0))], pytest.approx(6.0))
    assert store.states_sync([RPM])[RPM.name].remaining == 0  # the refusal took nothing


async def test_retry_after_is_the_time_until_the_amount_fits(store):
    assert (await take(store, TPM, tokens=550)).allowed
    refused = await take(store, TPM, tokens=100)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(5.0)  # 50 missing at 10 a second
    assert state_of(refused, TPM) == LimitState(TPM, 50, pytest.approx(55.0))


async def test_refill_over_time(store, clock):
    for _ in range(10):
        await take(store, RPM)
    clock.advance(3.0)
    refused = await take(store, RPM)
    assert (refused.allowed, refused.retry_after) == (False, pytest.approx(3.0))
    clock.advance(3.0)
    assert (await take(store, RPM)).allowed
    assert not (await take(store, RPM)).allowed
    clock.advance(30.0)
    assert store.states_sync([RPM])[RPM.name] == LimitState(RPM, 5, pytest.approx(30.0))
    clock.advance(3600.0)  # refill stops at capacity
    assert store.states_sync([RPM])[RPM.name] == LimitState(RPM, 10, 0.0)
    assert all([(await take(store, RPM)).allowed for _ in range(10)])
    assert not (await take(store, RPM)).allowed


async def test_fractional_refill_adds_up(store, clock):
    assert (await take(store, TPM, tokens=600)).allowed
    for _ in range(3):
        clock.advance(0.125)  # 1.25 tokens each
    assert (await take(store, TPM, tokens=3)).allowed
    assert not (await take(store, TPM, tokens=1)).allowed


async def test_all_or_nothing_refused_tokens_leave_requests_untouched(store):
    assert (await take(store, RPM, TENANT_RPM, TPM, tokens=500)).allowed
    refused = await take(store, RPM, TENANT_RPM, TPM, tokens=200)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(10.0)  # 100 tokens missing at 10 a second
    assert [state.remaining for state in refused.limits] == [9, 99, 100]
    states = store.states_sync([RPM, TENANT_RPM, TPM])
    assert {name: state.remaining for name, state in states.items()} == {
        RPM.name: 9, TENANT_RPM.name: 99, TPM.name: 100,
    }


async def test_all_or_nothing_refused_requests_leave_tokens_untouched(store):
    for _ in range(10):
        await take(store, RPM, TPM, tokens=10)
    refused = await take(store, RPM, TPM, tokens=10)
    assert not refused.allowed and refused.retry_after == pytest.approx(6.0)
    assert store.states_sync([TPM])[TPM.name].remaining == 500


async def test_retry_after_is_the_longest_wait_of_the_lacking_buckets(store):
    for _ in range(10):
        await take(store, RPM, TPM, tokens=59)
    refused = await take(store, RPM, TPM, tokens=20)  # rpm in 6 s, tpm (10 tokens) in 1 s
    assert refused.retry_after == pytest.approx(6.0)
    refused = await take(store, RPM, TPM, tokens=120)  # tpm (110 tokens) in 11 s
    assert refused.retry_after == pytest.approx(11.0)


async def test_amount_above_capacity_never_fits(store):
    refused = await take(store, RPM, TPM, tokens=601)
    assert (refused.allowed, refused.retry_after) == (False, math.inf)
    assert store.states_sync([RPM])[RPM.name].remaining == 10


async def test_refund_gives_back_but_never_above_capacity(store):
    await take(store, TPM, tokens=500)
    await store.refund(TPM, 300)
    assert store.states_sync([TPM])[TPM.name].remaining == 400
    await store.refund(TPM, 10_000)
    assert store.states_sync([TPM])[TPM.name] == LimitState(TPM, 600, 0.0)
    assert (await take(store, TPM, tokens=600)).allowed
    assert not (await take(store, TPM, tokens=1)).allowed


async def test_adjust_takes_more_and_goes_into_debt(store, clock):
    await take(store, TPM, tokens=100)
    await store.adjust(TPM, 50)
    assert store.states_sync([TPM])[TPM.name].remaining == 450
    await store.adjust(TPM, 1000)  # usage far above the estimate: 550 tokens in debt
    assert store.states_sync([TPM])[TPM.name] == LimitState(TPM, 0, pytest.approx(115.0))
    refused = await take(store, TPM, tokens=10)
    assert refused.retry_after == pytest.approx(56.0)  # pay the debt, then 10 more
    clock.advance(55.0)
    assert not (await take(store, TPM, tokens=10)).allowed
    clock.advance(1.0)
    assert (await take(store, TPM, tokens=10)).allowed


async def test_zero_amounts_and_no_limits(store):
    assert await store.acquire([], {}) == Decision(True, [])
    await store.refund(TPM, 0)
    await store.adjust(TPM, 0)
    assert (await take(store, RPM, requests=0)).allowed
    assert store.states_sync([RPM, TPM])[RPM.name].remaining == 10


async def test_negative_amounts_are_refused(store):
    with pytest.raises(ValueError):
        await take(store, TPM, tokens=-1)
    with pytest.raises(ValueError):
        await store.refund(TPM, -1)
    with pytest.raises(ValueError):
        await store.adjust(TPM, -1)


async def test_buckets_are_independent(store):
    other = Limit("key:13:rpm", "requests", 10)
    for _ in range(10):
        await take(store, RPM)
    assert (await take(store, other)).allowed
    assert store.states_sync([RPM, other])[other.name].remaining == 9


async def test_a_lowered_limit_applies_at_once(store):
    await take(store, RPM)
    lowered = Limit(RPM.name, "requests", 2)
    assert store.states_sync([lowered])[RPM.name].remaining == 2
    assert [(await take(store, lowered)).allowed for _ in range(3)] == [True, True, False]


async def test_concurrent_acquires_allow_exactly_capacity(store):
    decisions = await asyncio.gather(*[take(store, RPM) for _ in range(100)])
    assert [decision.allowed for decision in decisions].count(True) == 10
    assert store.states_sync([RPM])[RPM.name].remaining == 0


# --- Redis: shared between processes -----------------------------------------------------------
async def test_two_redis_stores_share_a_bucket(make_redis_store, clock):
    one, two = make_redis_store(clock=clock), make_redis_store(clock=clock)
    results = [(await take(store, RPM)).allowed for store in [one, two] * 6]
    assert results == [True] * 10 + [False] * 2
    await one.refund(RPM, 1)
    assert two.states_sync([RPM])[RPM.name].remaining == 1
    assert (await take(two, RPM)).allowed
    assert not (await take(one, RPM)).allowed


async def test_concurrent_acquires_from_two_redis_stores(make_redis_store):
    one, two = make_redis_store(), make_redis_store()  # real clock: a few ms of refill at most
    decisions = await asyncio.gather(*[take(store, RPM) for store in [one, two] * 50])
    assert [decision.allowed for decision in decisions].count(True) == 10


async def test_redis_keys_are_prefixed_and_expire_when_full_again(
    make_redis_store, redis_prefix, clock,
):
    store = make_redis_store(clock=clock)
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        await take(store, RPM)
        assert 60 < client.ttl(f"{redis_prefix}:rl:{RPM.name}") <= 66  # full again in 6 s
        await store.adjust(TPM, 6000)  # full again in 10 minutes: the debt is not forgotten
        assert 600 < client.ttl(f"{redis_prefix}:rl:{TPM.name}") <= 660
        await store.refund(TPM, 6600)  # full: the same as no key
        assert client.exists(f"{redis_prefix}:rl:{TPM.name}") == 0
    finally:
        client.close()


async def test_dead_redis_fails_open_to_in_process_buckets(clock, caplog):
    store = RedisRateLimitStore(url=closed_port_url(), prefix="gw-test", clock=clock, retry_after=0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kernel.redis_client"):
        assert [(await take(store, RPM)).allowed for _ in range(11)] == [True] * 10 + [False]
        await store.refund(RPM, 1)
        assert store.states_sync([RPM])[RPM.name].remaining == 1
        await store.adjust(RPM, 1)
        assert not (await take(store, RPM)).allowed
    assert time.monotonic() - started < 1.5
    outage_warnings = [r for r in caplog.records if "Redis failed" in r.getMessage()]
    assert len(outage_warnings) == 1 and "rate limits" in outage_warnings[0].getMessage()
    assert (store.fallback.redis_errors, store.fallback.local_calls) == (15, 15)
    await store.aclose()


# --- Redis: leases ------------------------------------------------------------------------------
BUSY = Limit("key:7:rpm", "requests", 6000)  # 1 % is 60 requests


def level_in_redis(redis_prefix: str, limit: Limit) -> float:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        tokens = client.hget(f"{redis_prefix}:rl:{limit.name}", "tokens")
    finally:
        client.close()
    return float(limit.per_minute) if tokens is None else float(tokens)


async def busy_second(store, clock, limit: Limit = BUSY, takes: int = 200, amount: int = 1) -> None:
    """`takes` takes of `amount` in one second of the store's clock; then the next second begins
    (and the bucket refills by a second's worth)."""
    for _ in range(takes):
        assert (await store.acquire([limit], {limit.name: amount})).allowed
    clock.advance(1.0)


async def test_a_busy_process_serves_its_next_takes_from_a_lease(make_redis_store, redis_prefix, clock):
    store = make_redis_store(clock=clock, lease_seconds=0.1)
    await busy_second(store, clock)  # 200 a second: 0.1 s of it is 20 requests
    assert store.acquire_now([BUSY], {BUSY.name: 1}) is None  # no lease yet: this take asks Redis
    level = 6000 - 200 + 100  # a second's refill

    decision = await take(store, BUSY)  # the request's one and a lease of 20, from Redis

    assert decision.allowed and state_of(decision, BUSY).remaining == level - 1
    assert level_in_redis(redis_prefix, BUSY) == level - 21
    served = [store.acquire_now([BUSY], {BUSY.name: 1}) for _ in range(20)]
    assert all(decision is not None and decision.allowed for decision in served)
    assert [state_of(decision, BUSY).remaining for decision in served[:2]] == [level - 2, level - 3]
    assert level_in_redis(redis_prefix, BUSY) == level - 21  # not one round trip more
    assert store.acquire_now([BUSY], {BUSY.name: 1}) is None  # used up: the next take asks Redis


async def test_processes_with_leases_never_take_more_than_the_limit(make_redis_store, clock):
    one = make_redis_store(clock=clock, lease_seconds=0.1)
    two = make_redis_store(clock=clock, lease_seconds=0.1)
    calls = 0
    for store in (one, two):
        script = store._redis.script

        async def counted(*args, _script=script, **kwargs):
            nonlocal calls
            calls += 1
            return await _script(*args, **kwargs)

        store._redis.script = counted
    for _ in range(100):  # a busy second for both
        for store in (one, two):
            assert (await take(store, BUSY)).allowed
    clock.advance(1.0)  # and a second's refill: 5,900 left
    calls = 0
    for _ in range(1000):  # 2,000 takes, the clock still, all in the bucket's upper half
        assert all([(await take(store, BUSY)).allowed for store in (one, two)])
    assert calls <= 2000 / 11 + 2  # each went to Redis once per lease of 10 (0.1 s of 100 a second)
    allowed = 200 + 2000
    while True:  # on until both are refused
        results = [(await take(store, BUSY)).allowed for store in (one, two)]
        allowed += sum(results)
        if not any(results):
            break

    assert allowed == 6000 + 100  # the bucket and a second of refill, not one request more


async def test_a_bucket_below_half_full_is_not_leased(make_redis_store, redis_prefix, clock):
    store = make_redis_store(clock=clock, lease_seconds=0.1)
    assert (await store.acquire([BUSY], {BUSY.name: 3000})).allowed  # half of it gone
    await busy_second(store, clock)

    assert (await take(store, BUSY)).allowed

    assert level_in_redis(redis_prefix, BUSY) == 6000 - 3000 - 200 + 100 - 1  # the request's one alone
    assert store.acquire_now([BUSY], {BUSY.name: 1}) is None


async def test_what_is_left_of_a_lease_goes_back_with_the_next_take(make_redis_store, redis_prefix, clock):
    store = make_redis_store(clock=clock, lease_seconds=0.1)
    await busy_second(store, clock)
    await take(store, BUSY)  # and a lease of 20
    assert store.acquire_now([BUSY], {BUSY.name: 1}) is not None  # 19 left
    assert level_in_redis(redis_prefix, BUSY) == 6000 - 200 + 100 - 21
    clock.advance(1.0)  # the lease is over (and a second refilled)
    assert store.acquire_now([BUSY], {BUSY.name: 1}) is None

    await take(store, BUSY)  # the 19 go back; the last second saw two takes: no lease worth it

    assert level_in_redis(redis_prefix, BUSY) == 6000 - 200 + 100 - 21 + 100 + 19 - 1


async def test_refunds_and_corrections_go_to_a_live_lease(make_redis_store, redis_prefix, clock):
    tpm = Limit("key:7:tpm", "tokens", 600_000)  # 1 % is 6,000 tokens
    store = make_redis_store(clock=clock, lease_seconds=0.1)
    await busy_second(store, clock, tpm, takes=100, amount=100)  # 10,000 tokens a second
    assert (await store.acquire([tpm], {tpm.name: 100})).allowed  # and a lease of 1,000 tokens
    before = level_in_redis(redis_prefix, tpm)
    assert before == 600_000 - 100 - 1_000  # the second's refill had filled the bucket again

    await store.refund(tpm, 60)
    await store.adjust(tpm, 500)

    assert level_in_redis(redis_prefix, tpm) == before  # both in process
    assert store.acquire_now([tpm], {tpm.name: 560}) is not None  # 1,000 + 60 - 500
    assert store.acquire_now([tpm], {tpm.name: 1}) is None
    await store.adjust(tpm, 50)  # more than the lease holds now: to Redis
    assert level_in_redis(redis_prefix, tpm) == before - 50


async def test_a_settlement_covered_by_a_live_lease_is_made_without_waiting(make_redis_store, redis_prefix, clock):
    """`change_now` (a request's token correction on its way out): in the lease when it covers
    it, nothing awaited; else False, and the caller sends it to Redis (`refund`/`adjust`)."""
    tpm = Limit("key:7:tpm", "tokens", 600_000)
    store = make_redis_store(clock=clock, lease_seconds=0.1)
    await busy_second(store, clock, tpm, takes=100, amount=100)
    assert (await store.acquire([tpm], {tpm.name: 100})).allowed  # and a lease of 1,000 tokens
    before = level_in_redis(redis_prefix, tpm)

    assert store.change_now(tpm, 60) and store.change_now(tpm, -500)

    assert store.acquire_now([tpm], {tpm.name: 560}) is not None  # 1,000 + 60 - 500
    assert not store.change_now(tpm, -50)  # the lease cannot pay for it
    assert level_in_redis(redis_prefix, tpm) == before  # nothing of it went to Redis here
    assert LocalRateLimitStore(clock=clock).change_now(tpm, -50)  # in process: always at once


# --- queueing ----------------------------------------------------------------------------------
@pytest.fixture
def real_store(make_store):
    """Queueing waits for real: a store on the real clock."""
    return make_store(time.time)


async def test_acquire_waiting_waits_for_capacity_within_the_queue_time(real_store):
    assert (await take(real_store, TPM, tokens=600)).allowed
    started = time.monotonic()
    decision = await acquire_waiting(real_store, [TPM], {TPM.name: 2}, queue_seconds=0.5)
    waited = time.monotonic() - started
    assert decision.allowed
    assert 0.15 < waited < 0.45  # two tokens at ten a second, plus at most 50 ms of jitter


async def test_acquire_waiting_gives_up_beyond_the_queue_time_at_once(real_store):
    assert (await take(real_store, TPM, tokens=600)).allowed
    started = time.monotonic()
    decision = await acquire_waiting(real_store, [TPM], {TPM.name: 5}, queue_seconds=0.3)
    assert time.monotonic() - started < 0.1  # half a second needed, 0.3 s queue: no point waiting
    assert not decision.allowed and decision.retry_after == pytest.approx(0.5, abs=0.05)


async def test_acquire_waiting_without_queue_time_or_too_large(real_store):
    assert (await acquire_waiting(real_store, [RPM], {RPM.name: 1}, queue_seconds=0)).allowed
    too_large = await acquire_waiting(real_store, [TPM], {TPM.name: 601}, queue_seconds=10)
    assert (too_large.allowed, too_large.retry_after) == (False, math.inf)


# --- headers -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.02, "20ms"), (0.0121, "13ms"), (0.9999, "1s"), (1, "1s"), (8.64, "8.64s"),
    (59.5, "59.5s"), (61.25, "1m1.25s"), (360, "6m0s"), (3600, "1h0m0s"), (3723.4, "1h2m3.4s"),
])
def test_duration_header_is_formatted_as_openai_does(seconds, text):
    assert duration_header(seconds) == text


def test_ratelimit_headers_use_the_tightest_bucket_of_each_kind():
    tenant_tpm = Limit("tenant:3:tpm", "tokens", 100_000)
    decision = Decision(True, [
        LimitState(RPM, 7, 18.0), LimitState(TENANT_RPM, 3, 58.2),
        LimitState(TPM, 590, 1.0), LimitState(tenant_tpm, 400, 359.76),
    ])
    assert ratelimit_headers(decision) == {
        "x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "58.2s",
        "x-ratelimit-limit-tokens": "100000", "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "5m59.76s",
    }


def test_ratelimit_headers_leave_out_a_kind_without_buckets():
    decision = Decision(False, [LimitState(RPM, 0, 60.0)], retry_after=6.0)
    assert ratelimit_headers(decision) == {
        "x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    assert ratelimit_headers(Decision(True, [])) == {}


# --- wiring ------------------------------------------------------------------------------------
def test_limit_rejects_nonsense():
    with pytest.raises(ValueError):
        Limit("key:1:rpm", "requests", 0)
    with pytest.raises(ValueError):
        Limit("key:1:rpm", "bytes", 10)


def test_rate_limit_store_follows_settings(settings):
    settings.REDIS_URL = ""
    local = rate_limit_store()
    assert isinstance(local, LocalRateLimitStore) and rate_limit_store() is local
    settings.REDIS_URL = "redis://127.0.0.1:6379/1"
    redis_store = rate_limit_store()
    assert isinstance(redis_store, RedisRateLimitStore) and rate_limit_store() is redis_store
