"""ConfigCache and Generation: one load per key and generation, a change seen by the next call,
a load that started before a change never stored under the new generation, the counter read at
most once per interval (in the background past half of it), the safety refresh served stale.

The counter here is an in-memory one (`Counter`), and the clock one the test moves: what another
process writes to the database's counter is `counter.value += 1` here
(tests/gateway_site/test_config_generation.py runs the same against the database)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.db import OperationalError

from kernel import config_cache
from kernel.config_cache import ConfigCache
from kernel.config_generation import Generation
from kernel.loops import background_wait


class Loader:
    """A load function that counts its calls and can be held until released; it returns the value
    as it was when it started (what a query reads)."""

    def __init__(self):
        self.calls = 0
        self.value = "v1"
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self):
        self.calls += 1
        value = self.value
        self.started.set()
        assert self.gate.wait(5), "the test never released the load"
        return value


class Counter:
    """The shared counter as other processes see it, and how often this one read it."""

    def __init__(self):
        self.value = 0
        self.reads = 0
        self.down = False

    def __call__(self):
        self.reads += 1
        if self.down:
            raise OperationalError("database down")
        return self.value


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def counter():
    return Counter()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cache(settings, counter, clock):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 10
    return ConfigCache("t", generations=Generation(read=counter, clock=clock))


async def settle() -> None:
    """Let the tasks started so far run up to their next wait (a held load, a finished read)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_misses_share_one_load(cache):
    load = Loader()
    load.gate.clear()
    waiting = [asyncio.ensure_future(cache.get("k", load)) for _ in range(20)]
    await settle()
    load.gate.set()
    assert await asyncio.gather(*waiting) == ["v1"] * 20
    assert load.calls == 1
    assert await cache.get("k", load) == "v1" and load.calls == 1


async def test_a_change_in_this_process_is_seen_by_the_next_call_which_waits_for_the_load(cache, counter):
    load = Loader()
    assert await cache.get("k", load) == "v1"
    cache.generations.changed()  # what a save in this process does; the counter is not read again
    load.value, reads = "v2", counter.reads
    load.gate.clear()
    call = asyncio.ensure_future(cache.get("k", load))
    await settle()
    assert not call.done()  # the old value is not served once the generation moved
    load.gate.set()
    assert await call == "v2" and load.calls == 2 and counter.reads == reads


async def test_a_load_that_started_before_a_change_is_not_kept_under_the_new_generation(cache):
    load = Loader()
    load.gate.clear()
    first = asyncio.ensure_future(cache.get("k", load))
    assert await asyncio.to_thread(load.started.wait, 5)  # it is reading the configuration as it was
    load.value = "v2"  # a change commits while it reads: the data and the generation together
    cache.generations.changed()
    second = asyncio.ensure_future(cache.get("k", load))  # does not join the old load
    await settle()
    load.gate.set()
    assert await first == "v1"  # its caller asked before the change
    assert await second == "v2" and load.calls == 2
    assert await cache.get("k", load) == "v2" and load.calls == 2


async def test_a_change_elsewhere_is_read_from_the_counter_once_per_interval(cache, counter, clock):
    load = Loader()
    assert await cache.get("k", load) == "v1" and counter.reads == 1
    counter.value += 1  # another process commits a change
    load.value = "v2"
    clock.now += 4.9  # within half the interval: nothing is read, the cached value is served
    assert await cache.get("k", load) == "v1" and counter.reads == 1
    clock.now += 5.2  # past the interval: the call waits for the read, then for the load
    assert await cache.get("k", load) == "v2" and counter.reads == 2 and load.calls == 2
    assert await cache.get("k", load) == "v2" and counter.reads == 2  # read once, by one call


async def test_past_half_the_interval_the_counter_is_read_in_the_background(cache, counter, clock):
    load = Loader()
    await cache.get("k", load)
    counter.value += 1
    load.value = "v2"
    clock.now += 6
    answers = [await cache.get("k", load) for _ in range(3)]
    assert answers == ["v1"] * 3  # nobody waited for the read
    await background_wait()
    assert counter.reads == 2  # one read for the three calls
    assert await cache.get("k", load) == "v2" and load.calls == 2


async def test_an_interval_of_zero_reads_the_counter_on_every_call(cache, counter, settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 0
    load = Loader()
    await cache.get("k", load)
    await cache.get("k", load)
    assert counter.reads == 2 and load.calls == 1
    counter.value += 1
    load.value = "v2"
    assert await cache.get("k", load) == "v2"


async def test_a_value_past_the_safety_refresh_is_served_while_one_refresh_runs(cache, monkeypatch):
    monkeypatch.setattr(config_cache, "REFRESH_SECONDS", 0.0)  # every value is due at once
    load = Loader()
    assert await cache.get("k", load) == "v1"
    load.value = "v2"  # a write that bypassed the generation (QuerySet.update)
    load.gate.clear()
    answers = [await cache.get("k", load) for _ in range(5)]
    assert answers == ["v1"] * 5  # nobody waits for the refresh
    generation, refresh = cache._loading["k"]
    load.gate.set()
    assert await refresh == "v2"
    assert load.calls == 2  # one refresh for the five calls
    assert await cache.get("k", load) == "v2" and load.calls == 2


async def test_a_database_outage_serves_the_cached_values_without_waiting_for_the_counter(cache, counter, clock):
    load = Loader()
    await cache.get("k", load)
    counter.down = True
    clock.now += 11
    assert await cache.get("k", load) == "v1"  # the failed read keeps what is cached
    reads = counter.reads
    counter.down = False  # it comes back, with a change made during the outage
    counter.value += 1
    load.value = "v2"
    clock.now += 11  # past the interval again: after a failed read nobody waits for the next one
    assert await cache.get("k", load) == "v1"
    await background_wait()
    assert counter.reads == reads + 1
    assert await cache.get("k", load) == "v2"


async def test_load_errors_reach_the_caller_and_store_nothing(cache):
    def broken():
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        await cache.get("x", broken)
    load = Loader()
    assert await cache.get("x", load) == "v1" and load.calls == 1
