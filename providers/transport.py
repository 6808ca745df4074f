"""The gateway's HTTP client for upstream provider calls, on aiohttp's public API only.

Every provider call (the adapters' chat, streams and embeddings) goes through one
`UpstreamClient` per event loop (`providers/http.py`): one aiohttp `ClientSession`, its connection
pool and C HTTP parser. aiohttp's connector costs 0.25 ms of CPU per upstream call at 64
concurrent requests where httpx's pool cost 1.1 ms (docs/performance.md).

What the adapters rely on:
- `post()` returns once the response's headers are in; `UpstreamResponse.aread()` reads a body
  whole, `aiter_bytes()` hands it on chunk by chunk as it arrives;
- timeouts (`Timeouts`): `connect` per connection attempt, `read` per read of the socket (so a
  stream may last longer than the read timeout while it keeps moving), `pool` for getting a
  connection (waiting for a free one included);
- failures raise `UpstreamTimeout` (a timeout, the adapters' `timeout`) or `UpstreamError`
  (refused, reset, cut or malformed: `connection`), whose `kind` names the failure;
- the bytes a provider sent before a cut reach the consumer before the error: a stream's body is
  read by a task of its own that always waits in `readany`, so what arrives while the consumer
  is busy is taken off the connection before aiohttp turns the cut into an error (once it has,
  aiohttp raises the error ahead of any bytes still in its buffer; a `readany` already waiting
  returns the bytes that woke it even when the cut follows them at once, which
  tests/providers/test_transport.py holds for the aiohttp installed). The task reads as fast as
  the provider sends: for a slow consumer the bytes wait in memory, at most one answer, whose
  size its output tokens bound;
- nothing is shared between requests but connections: no cookie jar (a provider's cookie must
  never travel with another tenant's request), no redirects, no decompression (requests ask for
  `identity`);
- a proxy named by the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) is used,
  read once per client; `.netrc` is not read (aiohttp's `trust_env` reads it on every request).
"""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import yarl


class UpstreamError(Exception):
    """No complete answer from the provider: refused, reset, cut short or malformed."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind = kind


class UpstreamTimeout(UpstreamError):
    """A connect, read or pool timeout."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float | None
    read: float | None
    pool: float | None


# aiohttp's failures, by the name they keep in the gateway's messages and logs.
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (aiohttp.ConnectionTimeoutError, "ConnectTimeout"),
    (aiohttp.SocketTimeoutError, "ReadTimeout"),
    (TimeoutError, "Timeout"),
    (aiohttp.ClientConnectorError, "ConnectError"),
    (aiohttp.ServerDisconnectedError, "RemoteProtocolError"),
    (aiohttp.ClientPayloadError, "RemoteProtocolError"),
    (aiohttp.ClientResponseError, "RemoteProtocolError"),
    (aiohttp.InvalidURL, "UnsupportedProtocol"),
    (aiohttp.NonHttpUrlClientError, "UnsupportedProtocol"),
)
_FAILURES = (aiohttp.ClientError, TimeoutError, OSError)


def _failure(exc: BaseException) -> UpstreamError:
    kind = next((name for kinds, name in _KINDS if isinstance(exc, kinds)), "ReadError")
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(kind, message)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        message = "Server disconnected without sending a complete response."
    return UpstreamError(kind, message)


class _StreamedBody:
    """A body read by its own task (see the module docstring), handed on as it arrives."""

    __slots__ = ("_chunks", "_error", "_ended", "_waiter", "task")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._chunks: list[bytes] = []
        self._error: UpstreamError | None = None
        self._ended = False
        self._waiter: asyncio.Future | None = None
        self.task = asyncio.get_running_loop().create_task(self._read(content))

    async def _read(self, content: aiohttp.StreamReader) -> None:
        try:
            while chunk := await content.readany():
                self._chunks.append(chunk)
                self._wake()
        except asyncio.CancelledError:
            raise  # the consumer went away (`UpstreamResponse.aclose`)
        except _FAILURES as exc:
            self._error = _failure(exc)
        except Exception as exc:  # never leave the consumer waiting
            self._error = UpstreamError(type(exc).__name__, str(exc))
        finally:
            self._ended = True
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunks, self._chunks = self._chunks, []
                yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
            elif self._ended:
                if self._error is not None:
                    raise self._error
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None


class UpstreamResponse:
    """A provider's answer: status and headers at once; the body read whole or streamed."""

    __slots__ = ("status_code", "headers", "content", "_response", "_body")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.status_code = response.status
        self.headers = response.headers  # case-insensitive, as sent
        self.content = b""
        self._response = response
        self._body: _StreamedBody | None = None

    async def aread(self) -> bytes:
        """Read the whole body; its connection goes back to the pool (or is closed if cut)."""
        try:
            self.content = await self._response.read()
        except _FAILURES as exc:
            raise _failure(exc) from exc
        return self.content

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; once only."""
        self._body = _StreamedBody(self._response.content)
        return self._body.chunks()

    def json(self) -> object:
        # bytes: the json module finds UTF-8, -16 or -32 itself (RFC 8259 section 8.1)
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(self._response.charset or "utf-8", "replace")

    async def aclose(self) -> None:
        """A body read to its end gives its connection back to the pool; one left half-read (the
        client went away mid-stream) is closed: the rest of its body is still coming."""
        if self._body is not None and not self._body.task.done():
            self._body.task.cancel()
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


class UpstreamClient:
    """One aiohttp session (made on first use, inside the event loop that will serve it)."""

    def __init__(
        self, *, timeouts: Timeouts, max_connections: int = 100, keepalive_expiry: float = 30
    ) -> None:
        self.timeouts = timeouts
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        proxies = urllib.request.getproxies()
        self._proxies = {scheme: url for scheme, url in proxies.items() if scheme != "no"}
        self._session: aiohttp.ClientSession | None = None

    def _session_get(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_expiry,
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                headers={"accept-encoding": "identity"},
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def post(
        self, url: str, *, content: bytes, headers: Mapping[str, str], timeouts: Timeouts | None = None
    ) -> UpstreamResponse:
        """POST `content`; returns once the response's headers are in."""
        parsed = _url(url)
        try:
            response = await self._session_get().post(
                parsed,
                data=content,
                headers=headers,
                allow_redirects=False,
                proxy=self._proxy_for(parsed) if self._proxies else None,
                timeout=_client_timeout(timeouts or self.timeouts),
            )
        except _FAILURES as exc:
            raise _failure(exc) from exc
        return UpstreamResponse(response)

    def _proxy_for(self, url: yarl.URL) -> str | None:
        proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
        if proxy and not urllib.request.proxy_bypass(url.host or ""):
            return proxy
        return None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@functools.lru_cache(maxsize=1024)
def _url(url: str) -> yarl.URL:
    """An upstream URL parsed once: a deployment's URLs are few, and `yarl.URL` is immutable."""
    return yarl.URL(url)


@functools.lru_cache(maxsize=256)
def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    # aiohttp's `connect` covers getting a connection from the pool, waiting for one included.
    return aiohttp.ClientTimeout(
        total=None, connect=timeouts.pool, sock_connect=timeouts.connect, sock_read=timeouts.read
    )
