"""Hot-path configuration kept in process: one load at a time, values tagged with a generation.

Routing tables, API keys, member sessions, budgets, rate limits, guardrail and cache policies are
read on every request and change rarely. Each lives in a `ConfigCache`: a value per key, loaded
from the database on `kernel.db_executor`'s threads and tagged with the configuration
generation it was loaded under (`kernel.config_generation`).

- A value is served while its generation is the current one: a change, in this process or any
  other, makes every value loaded before it stale, and the next call for it loads again (and
  waits for that load: a revoked key is never served from the old value).
- Single flight: concurrent calls missing the same key under the same generation share one load.
- A load that started under one generation stores its value under that one: a load still
  reading the old configuration when a change commits is never taken for the new one.
- Safety refresh: a value older than `REFRESH_SECONDS` is loaded again in the background while
  calls keep the previous one, for writes that bypass the generation (`QuerySet.update()`, raw
  SQL) and what changes with the clock alone (a session that expires).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Hashable
from typing import ClassVar, Generic, TypeVar

from kernel.config_generation import Generation, generation
from kernel.db_executor import db_call

T = TypeVar("T")
logger = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0


class ConfigCache(Generic[T]):
    # Every cache made (tests check that what each loads from raises the generation).
    instances: ClassVar[weakref.WeakSet[ConfigCache]] = weakref.WeakSet()

    def __init__(self, name: str, *, max_keys: int = 10_000, generations: Generation = generation):
        ConfigCache.instances.add(self)
        self.name = name
        self.max_keys = max_keys
        self.generations = generations
        self._values: dict[Hashable, tuple[int, float, T]] = {}  # generation, refresh time, value
        self._loading: dict[Hashable, tuple[int, asyncio.Future]] = {}

    async def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The value for `key`; `load` (sync, may query the database) runs when none is current."""
        current = self.generations.known()
        if current is None:  # no await on a hit: this is every request's path, several times
            current = await self.generations.current()
        cached = self._values.get(key)
        if cached is not None and cached[0] == current:
            if cached[1] <= time.monotonic() and key not in self._loading:
                self._load_start(key, load, current).add_done_callback(_retrieve)
            return cached[2]
        loading = self._loading.get(key)
        future = loading[1] if loading is not None and loading[0] == current else self._load_start(key, load, current)
        return await asyncio.shield(future)

    def _load_start(self, key: Hashable, load: Callable[[], T], current: int) -> asyncio.Future:
        future = asyncio.ensure_future(self._load(key, load, current))
        self._loading[key] = (current, future)
        return future

    async def _load(self, key: Hashable, load: Callable[[], T], current: int) -> T:
        latest = False
        try:
            value = await db_call(load)
        finally:
            # Only the latest load of a key stores: not one a newer generation's load has
            # replaced since it started.
            loading = self._loading.get(key)
            if loading is not None and loading[1] is asyncio.current_task():
                latest = True
                del self._loading[key]
        if latest:
            if len(self._values) >= self.max_keys:
                self._values.clear()
            self._values[key] = (current, time.monotonic() + REFRESH_SECONDS, value)
        return value


def _retrieve(future: asyncio.Future) -> None:
    """A background refresh that failed keeps the stale value; say why once."""
    if not future.cancelled() and future.exception() is not None:
        logger.warning("configuration refresh failed; serving the previous value", exc_info=future.exception())
