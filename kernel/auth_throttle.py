"""Failed authentications counted per client address, and the refusal of an address past the limit.

Every door that takes a key calls `auth_throttle_check` before looking the key up and
`auth_failure_count` (or `_sync`, for the operator API's sync authentication) when a key it was
given is refused: the tenant API over HTTP (OpenAI's and Anthropic's formats), the WebSocket, and
the operator API's staff tokens. A request without any key is not a guess and is not counted.

- After `GATEWAY_AUTH_FAILURES_PER_MINUTE` failures from one address within a minute (from its
  first failure), its next failure is answered 429 `too_many_auth_failures` with `Retry-After`,
  and so is every request from it until that minute is over, **a right key included**: its
  requests are refused before the key is looked up, so guessing cannot go on. 0 turns it off.
- A success costs nothing extra: `auth_throttle_check` is a lookup in this process's memory. A
  failure costs one atomic Redis call (INCR with its expiry, one script) when `REDIS_URL` is set,
  so that every worker counts towards the same limit; without Redis the count is in process.
- A process refuses an address once it has seen the address go over the limit: from its own
  count in process, or from the answer to its own next failure of that address on Redis. With N
  worker processes an address can therefore try at most N-1 keys past the limit.
- The address is the ASGI scope's client (Django's `REMOTE_ADDR`): the peer, or, when the server
  runs with `--proxy-headers` (`manage.py serve`), the address the proxy put in X-Forwarded-For.
  Behind a proxy without it every client has the proxy's address and shares one count. An IPv6
  address counts by its /64. A request whose server reports no address (a Unix socket) is not
  throttled.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable

from django.conf import settings

from kernel import metrics
from kernel.errors import AuthThrottled, GatewayError
from kernel.redis_client import RedisConnections, RedisFallback, shared_store

WINDOW_SECONDS = 60
# Addresses kept in process (counts without Redis, refusals); past it the expired ones are dropped.
MAX_ADDRESSES = 100_000

# KEYS[1] the address's count; ARGV[1] the window in ms. Returns {failures, ms left in the window}.
_COUNT = """
local failures = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {failures, left}
"""


def _pruned(entries: dict, now: float, end: Callable[[object], float]) -> dict:
    """`entries` ({address: value}) without the expired ones once it grew past `MAX_ADDRESSES`
    (`end(value)` says when a value expires); emptied if that many are live at once."""
    if len(entries) <= MAX_ADDRESSES:
        return entries
    live = {address: value for address, value in entries.items() if end(value) > now}
    return live if len(live) <= MAX_ADDRESSES else {}


class LocalAuthFailures:
    """Counts in this process: the embedded mode, and the fallback while Redis does not answer."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._counts: dict[str, tuple[int, float]] = {}  # address -> (failures, window's end)
        self._lock = threading.Lock()  # the operator API counts from its request threads

    def count(self, address: str) -> tuple[int, float]:
        """One more failure of `address`: (failures in its window, seconds left in it)."""
        now = self.clock()
        with self._lock:
            failures, end = self._counts.get(address, (0, now))
            if end <= now:
                failures, end = 0, now + WINDOW_SECONDS
            self._counts[address] = (failures + 1, end)
            self._counts = _pruned(self._counts, now, lambda value: value[1])
        return failures + 1, end - now


class AuthFailureStore:
    """Where failures are counted, and the addresses this process refuses until a deadline."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._refused: dict[str, float] = {}  # address -> when its window ends (clock)

    @property
    def refusing(self) -> bool:
        """Whether this process refuses any address now (most of the time: none)."""
        return bool(self._refused)

    def refused_for(self, address: str) -> float:
        """Seconds this process still refuses `address`; 0 when it does not."""
        deadline = self._refused.get(address)
        if deadline is None:
            return 0.0
        left = deadline - self.clock()
        if left <= 0:
            self._refused.pop(address, None)
            return 0.0
        return left

    def refuse(self, address: str, seconds: float) -> None:
        now = self.clock()
        self._refused[address] = now + seconds
        self._refused = _pruned(self._refused, now, lambda deadline: deadline)

    async def count(self, address: str) -> tuple[int, float]:
        raise NotImplementedError

    def count_sync(self, address: str) -> tuple[int, float]:
        raise NotImplementedError


class LocalAuthFailureStore(AuthFailureStore):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.local = LocalAuthFailures(clock=self.clock)

    async def count(self, address: str) -> tuple[int, float]:
        return self.local.count(address)

    def count_sync(self, address: str) -> tuple[int, float]:
        return self.local.count(address)


class RedisAuthFailureStore(AuthFailureStore):
    """Counts in Redis (`{prefix}:authfail:{address}`), shared by every worker; one script per failure."""

    def __init__(self, *, url: str, prefix: str, timeout: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self._prefix = prefix
        self._redis = RedisConnections(url, timeout=timeout)
        self._script = None  # the sync client's registered script, made on first use
        self.fallback: RedisFallback[LocalAuthFailures] = RedisFallback(
            what="failed authentication counts", make_local=lambda: LocalAuthFailures(clock=self.clock),
        )

    def _key(self, address: str) -> str:
        return f"{self._prefix}:authfail:{address}"

    async def count(self, address: str) -> tuple[int, float]:
        async def remote() -> tuple[int, float]:
            failures, left_ms = await self._redis.script(
                _COUNT, keys=[self._key(address)], args=[WINDOW_SECONDS * 1000])
            return int(failures), int(left_ms) / 1000

        async def local(store: LocalAuthFailures) -> tuple[int, float]:
            return store.count(address)

        return await self.fallback.run(remote, local)

    def count_sync(self, address: str) -> tuple[int, float]:
        def remote() -> tuple[int, float]:
            if self._script is None:
                self._script = self._redis.sync_client().register_script(_COUNT)
            failures, left_ms = self._script(keys=[self._key(address)], args=[WINDOW_SECONDS * 1000])
            return int(failures), int(left_ms) / 1000

        return self.fallback.run_sync(remote, lambda store: store.count(address))


def auth_failure_store() -> AuthFailureStore:
    """The process's store: Redis when `REDIS_URL` is set, else in process."""
    return shared_store(local=LocalAuthFailureStore, remote=RedisAuthFailureStore)


def auth_throttle_check(*, client: str | None, door: str) -> None:
    """Refuse (`AuthThrottled`) an address that is over the limit, before its key is looked up.
    No I/O: what this process has learnt from its own counts."""
    if not client or not settings.GATEWAY_AUTH_FAILURES_PER_MINUTE:
        return
    store = auth_failure_store()
    if store.refusing and (left := store.refused_for(_counted_as(client))):
        raise _throttled(door=door, seconds=left)


async def auth_failure_count(*, client: str | None, door: str, error: GatewayError) -> GatewayError:
    """Count a refused key of `client`; return the error to answer: `error`, or `AuthThrottled`
    when this failure took the address past the limit."""
    metrics.AUTH_FAILURES.labels(door).inc()
    if not client or not settings.GATEWAY_AUTH_FAILURES_PER_MINUTE:
        return error
    store, address = auth_failure_store(), _counted_as(client)
    return _verdict(store, address, door, error, await store.count(address))


def auth_failure_count_sync(*, client: str | None, door: str, error: Exception) -> Exception:
    """`auth_failure_count` for sync callers (the operator API's DRF authentication)."""
    metrics.AUTH_FAILURES.labels(door).inc()
    if not client or not settings.GATEWAY_AUTH_FAILURES_PER_MINUTE:
        return error
    store, address = auth_failure_store(), _counted_as(client)
    return _verdict(store, address, door, error, store.count_sync(address))


def _counted_as(client: str) -> str:
    """The address failures count against: an IPv4 address itself, an IPv6 address's /64 (one
    site's whole prefix, which a client can pick addresses from at will)."""
    if ":" not in client:
        return client
    try:
        address = ipaddress.IPv6Address(client.split("%", 1)[0])
    except ValueError:
        return client
    if address.ipv4_mapped is not None:  # a dual-stack socket's IPv4 client
        return str(address.ipv4_mapped)
    return f"{ipaddress.IPv6Network((address, 64), strict=False).network_address}/64"


def _verdict(store: AuthFailureStore, address: str, door: str, error, counted: tuple[int, float]):
    failures, left = counted
    if failures <= settings.GATEWAY_AUTH_FAILURES_PER_MINUTE:
        return error
    store.refuse(address, left)
    return _throttled(door=door, seconds=left)


def _throttled(*, door: str, seconds: float) -> AuthThrottled:
    metrics.AUTH_THROTTLED.labels(door).inc()
    wait = max(1, math.ceil(seconds))
    return AuthThrottled(
        f"Too many failed authentications from this address; retry in {wait} s.",
        headers={"retry-after": str(wait)},
    )
