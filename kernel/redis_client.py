"""The process's Redis clients, for the shared fast state (breakers, health, counters, limits).

Redis is an optimisation of the gateway, not a dependency of serving: when it does not answer,
callers decide from in-process state for that call (`RedisFallback`) and go back to Redis once it
answers again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from kernel.loops import Batches, PerLoop

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
# At most this many script calls in one pipeline.
SCRIPT_BATCH_MAX = 256
# A deferred script call (`RedisConnections.script(..., deferred=True)`: bookkeeping nobody waits
# for) goes out with the loop's next call, or after this long at the latest.
SCRIPT_DEFER_SECONDS = 0.05

T = TypeVar("T")
L = TypeVar("L")

# Any Redis failure sends the call to the in-process store: refused or cut connections, timeouts,
# a server loading its data, out of memory, read-only, or not Redis at all. Breakers and health
# must never be the reason a request fails; the warning names the error.
REDIS_DOWN = (redis.exceptions.RedisError, OSError)


class RedisConnections:
    """Clients for one Redis URL: one `redis.asyncio` client per running event loop, one sync client.

    An asyncio client's connections belong to the loop that opened them: one per process under the
    ASGI server, one per test under pytest (as `providers.http` does for the upstream client). Timeouts are short
    and retries off, so a dead Redis costs one short wait and then the in-process fallback.
    """

    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        self.url = url
        self._options = {
            "socket_connect_timeout": timeout, "socket_timeout": timeout, "decode_responses": True,
        }
        self._loops: PerLoop[tuple[aioredis.Redis, ScriptBatches]] = PerLoop(self._client_make)
        self._sync: redis.Redis | None = None

    def async_client(self) -> aioredis.Redis:
        return self._loops.get()[0]

    async def script(self, source: str, *, keys: list[str], args: list, deferred: bool = False) -> Any:
        """Run the Lua script `source` (EVALSHA, loading it when Redis does not have it).

        Calls made while this loop's previous calls are on the wire go out together, in one
        pipeline, when those are answered (`ScriptBatches`). A `deferred` call (bookkeeping that
        no request waits for) waits for the loop's next call to share its pipeline, at most
        `SCRIPT_DEFER_SECONDS`; the loop's calls still reach Redis in the order they were made."""
        return await self._loops.get()[1].call(source, keys, args, deferred=deferred)

    def sync_client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **self._options)
        return self._sync

    async def aclose(self) -> None:
        """Close the running loop's client (tests; a server process keeps its one client)."""
        entry = self._loops.pop()
        if entry is not None:
            await entry[0].aclose()

    def _client_make(self) -> tuple[aioredis.Redis, ScriptBatches]:
        # A bounded pool that makes callers queue for a connection: a burst of requests must not
        # open hundreds of connections at once and time out connecting.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=MAX_CONNECTIONS, timeout=self._options["socket_timeout"] * 4,
            retry=AsyncRetry(NoBackoff(), 0), **self._options,
        )
        client = aioredis.Redis(connection_pool=pool)
        return client, ScriptBatches(client)


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


class ScriptBatches:
    """Lua script calls of one event loop, sent in pipelines, one pipeline on the wire at a time
    (`kernel.loops.Batches`).

    A lone call goes out at once, as a plain EVALSHA would. Calls that come while a pipeline is
    out wait for its answer and then go out together in the next one, so under load one round
    trip, one pooled connection and one parse loop serve many requests (redis-py spends about as
    much CPU acquiring a pooled connection for a command as it does on the command itself).
    Each call still gets its own answer or its own error: a script's error is that call's, a
    connection's error is every call's in the pipeline (and each caller's `RedisFallback` decides).
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._shas: dict[str, str] = {}
        self._batches: Batches[tuple[str, list[str], list]] = Batches(
            self._send, limit=SCRIPT_BATCH_MAX, defer_seconds=SCRIPT_DEFER_SECONDS,
        )

    async def call(self, source: str, keys: list[str], args: list, *, deferred: bool = False) -> Any:
        return await self._batches.submit((source, keys, args), deferred=deferred)

    async def _send(self, _key, batch: list) -> list:
        results = await self._pipeline(batch)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:  # Redis restarted or was flushed: load the scripts, send those calls again
            for source in {batch[i][0] for i in missing}:
                self._shas[source] = await self._client.script_load(source)
            again = await self._pipeline([batch[i] for i in missing])
            for i, result in zip(missing, again):
                results[i] = result
        return results

    async def _pipeline(self, batch: list) -> list:
        pipe = self._client.pipeline(transaction=False)
        for source, keys, args in batch:
            sha = self._shas.get(source)
            if sha is None:
                sha = self._shas[source] = _sha(source)
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)


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
