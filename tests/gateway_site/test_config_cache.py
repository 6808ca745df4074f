"""ConfigCache: one load for concurrent misses, stale values while refreshing, clear during a load."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway_site.config_cache import ConfigCache


class Loader:
    """A load function that counts its calls and can be held until released."""

    def __init__(self):
        self.calls = 0
        self.value = "v1"
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self):
        self.calls += 1
        assert self.gate.wait(5), "the test never released the load"
        return self.value


async def test_concurrent_misses_share_one_load(settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 60
    cache, load = ConfigCache("t"), Loader()
    load.gate.clear()
    waiting = [asyncio.ensure_future(cache.get("k", load)) for _ in range(20)]
    load.gate.set()
    assert await asyncio.gather(*waiting) == ["v1"] * 20
    assert load.calls == 1
    assert await cache.get("k", load) == "v1" and load.calls == 1


async def test_an_expired_value_is_served_while_one_refresh_runs(settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 60
    cache, load = ConfigCache("t"), Loader()
    assert await cache.get("k", load) == "v1"
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 0.000001
    load.value = "v2"
    await cache.get("k", Loader())  # a fresh entry with a tiny lifetime
    cache._values["k"] = (0.0, "v1")  # expired
    load.gate.clear()
    answers = [await cache.get("k", load) for _ in range(5)]
    assert answers == ["v1"] * 5  # nobody waits for the refresh
    refresh = cache._loading["k"]
    load.gate.set()
    assert await refresh == "v2"
    assert load.calls == 2  # only one refresh ran for the five calls
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 60
    assert await cache.get("k", load) == "v2"


async def test_clear_during_a_load_does_not_store_the_old_result(settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 60
    cache, load = ConfigCache("t"), Loader()
    load.gate.clear()
    first = asyncio.ensure_future(cache.get("k", load))
    await asyncio.sleep(0)  # the load starts (with the configuration as it was)
    cache.clear()  # an admin save while the load was reading the old configuration
    load.gate.set()
    assert await first == "v1"
    load.value = "v2"
    assert await cache.get("k", load) == "v2" and load.calls == 2


async def test_zero_seconds_reads_every_time_and_errors_reach_the_caller(settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 0
    cache, load = ConfigCache("t"), Loader()
    await cache.get("k", load)
    await cache.get("k", load)
    assert load.calls == 2

    settings.GATEWAY_CONFIG_CACHE_SECONDS = 60

    def broken():
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        await cache.get("x", broken)
    assert "x" not in cache._values and "x" not in cache._loading
