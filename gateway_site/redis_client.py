"""The process's Redis clients, for the shared fast state (breakers, health, counters, limits).

Redis is an optimisation of the gateway, not a dependency of serving: when it does not answer,
callers decide from in-process state for that call (`RedisFallback`) and go back to Redis once it
answers again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.retry import Retry

from gateway_site.loops import PerLoop

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 32

T = TypeVar("T")
L = TypeVar("L")

# Any Redis failure sends the call to the in-process store: refused or cut connections, timeouts,
# a server loading its data, out of memory, read-only, or not Redis at all. Breakers and health
# must never be the reason a request fails; the warning names the error.
REDIS_DOWN = (redis.exceptions.RedisError, OSError)


class RedisConnections:
    """Clients for one Redis URL: one `redis.asyncio` client per running event loop, one sync client.

    An asyncio client's connections belong to the loop that opened them: one per process under the
    ASGI server, one per test under pytest (as `providers.http` does for httpx). Timeouts are short
    and retries off, so a dead Redis costs one short wait and then the in-process fallback.
    """

    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        self.url = url
        self._options = {
            "socket_connect_timeout": timeout, "socket_timeout": timeout, "decode_responses": True,
        }
        self._loops: PerLoop[tuple[aioredis.Redis, dict[str, AsyncScript]]] = PerLoop(self._client_make)
        self._sync: redis.Redis | None = None

    def async_client(self) -> aioredis.Redis:
        return self._loops.get()[0]

    def async_script(self, source: str) -> AsyncScript:
        """`source` registered on this loop's client: EVALSHA, and EVAL when Redis lost the script."""
        client, scripts = self._loops.get()
        if source not in scripts:
            scripts[source] = client.register_script(source)
        return scripts[source]

    def sync_client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **self._options)
        return self._sync

    async def aclose(self) -> None:
        """Close the running loop's client (tests; a server process keeps its one client)."""
        entry = self._loops.pop()
        if entry is not None:
            await entry[0].aclose()

    def _client_make(self) -> tuple[aioredis.Redis, dict[str, AsyncScript]]:
        # A bounded pool that makes callers queue for a connection: a burst of requests must not
        # open hundreds of connections at once and time out connecting.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=MAX_CONNECTIONS, timeout=self._options["socket_timeout"] * 4,
            retry=AsyncRetry(NoBackoff(), 0), **self._options,
        )
        return aioredis.Redis(connection_pool=pool), {}


class RedisFallback(Generic[L]):
    """Runs a call on Redis, or on an in-process store `local` while Redis does not answer.

    After a failure Redis is left alone for `retry_after` seconds, so a Redis that times out
    costs one short wait per `retry_after` rather than one per request; the first call after that
    tries it again. The outage is logged once per `warn_every` seconds, not per request. When Redis
    answers again, `local` starts afresh: Redis is the shared truth and the in-process state of
    this outage would be stale by the next one.
    """

    def __init__(
        self, *, what: str, make_local: Callable[[], L], retry_after: float = 1.0,
        warn_every: float = 30.0,
    ) -> None:
        self.local = make_local()
        self.local_calls = 0  # calls answered in process, and Redis errors seen: for metrics
        self.redis_errors = 0
        self._what, self._make_local = what, make_local
        self._retry_after, self._warn_every = retry_after, warn_every
        self._down_until: float | None = None
        self._warned_at: float | None = None

    async def run(self, remote: Callable[[], Awaitable[T]], local: Callable[[L], Awaitable[T]]) -> T:
        if self._should_try():
            try:
                result = await remote()
            except REDIS_DOWN as exc:
                self._failed(exc)
            else:
                self._answered()
                return result
        self.local_calls += 1
        return await local(self.local)

    def run_sync(self, remote: Callable[[], T], local: Callable[[L], T]) -> T:
        if self._should_try():
            try:
                result = remote()
            except REDIS_DOWN as exc:
                self._failed(exc)
            else:
                self._answered()
                return result
        self.local_calls += 1
        return local(self.local)

    def _should_try(self) -> bool:
        return self._down_until is None or time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.redis_errors += 1
        self._down_until = now + self._retry_after
        if self._warned_at is None or now - self._warned_at >= self._warn_every:
            self._warned_at = now
            logger.warning("Redis failed (%s: %s); %s kept in process until it answers",
                           type(exc).__name__, exc, self._what)

    def _answered(self) -> None:
        if self._down_until is not None:
            self._down_until = None
            self.local = self._make_local()
            logger.info("Redis answers again; %s back in Redis", self._what)


def shared_store(*, local: type[L], remote: type) -> L:
    """The process's store of one kind: `remote(url=, prefix=)` when `REDIS_URL` is set, else
    `local()`. One per (URL, key prefix), so a test that overrides either gets a fresh store."""
    return _store_for(local, remote, settings.REDIS_URL, settings.GATEWAY_REDIS_PREFIX)


@functools.cache
def _store_for(local: type, remote: type, url: str, prefix: str):
    return remote(url=url, prefix=prefix) if url else local()
