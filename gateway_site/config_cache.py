"""Hot-path configuration kept in process: one load at a time, stale while refreshing.

Routing tables, API keys, budgets, rate limits, guardrail and cache policies are read on every
request and change rarely. Each lives in a `ConfigCache`: a value per key, loaded from the
database on `gateway_site.db_executor`'s threads and kept for `GATEWAY_CONFIG_CACHE_SECONDS`.

- Single flight: concurrent requests missing the same key share one load.
- Stale while refreshing: once a value expired, the first request starts a refresh in the
  background and every request keeps the previous value until it lands, so an expiry never
  stalls traffic or sends every in-flight request to the database at once.
- `GATEWAY_CONFIG_CACHE_SECONDS = 0` reads the database on every call (tests, debugging).
- `clear()` (connected to the admin's saves, see the apps' `ready`) drops every value; a load
  that was running when it happened is not stored, so a change is never hidden by a load that
  started before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from django.conf import settings

from gateway_site.db_executor import db_call

T = TypeVar("T")
logger = logging.getLogger(__name__)


class ConfigCache(Generic[T]):
    def __init__(self, name: str, *, max_keys: int = 10_000):
        self.name = name
        self.max_keys = max_keys
        self._values: dict[Hashable, tuple[float, T]] = {}
        self._loading: dict[Hashable, asyncio.Future] = {}
        self._generation = 0

    def clear(self) -> None:
        self._values.clear()
        self._loading.clear()
        self._generation += 1

    async def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The value for `key`; `load` (sync, may query the database) runs when none is fresh.

        `GATEWAY_CONFIG_CACHE_SECONDS = 0` turns the cache off: every call loads.
        """
        if settings.GATEWAY_CONFIG_CACHE_SECONDS <= 0:
            return await db_call(load)
        cached = self._values.get(key)
        if cached is not None:
            if cached[0] <= time.monotonic() and key not in self._loading:
                self._load_start(key, load).add_done_callback(_retrieve)
            return cached[1]
        future = self._loading.get(key) or self._load_start(key, load)
        return await asyncio.shield(future)

    def _load_start(self, key: Hashable, load: Callable[[], T]) -> asyncio.Future:
        future = asyncio.ensure_future(self._load(key, load, self._generation))
        self._loading[key] = future
        return future

    async def _load(self, key: Hashable, load: Callable[[], T], generation: int) -> T:
        try:
            value = await db_call(load)
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]
        if generation == self._generation:
            if len(self._values) >= self.max_keys:
                self._values.clear()
            self._values[key] = (time.monotonic() + settings.GATEWAY_CONFIG_CACHE_SECONDS, value)
        return value


def _retrieve(future: asyncio.Future) -> None:
    """A background refresh that failed keeps the stale value; say why once."""
    if not future.cancelled() and future.exception() is not None:
        logger.warning("configuration refresh failed; serving the previous value", exc_info=future.exception())
