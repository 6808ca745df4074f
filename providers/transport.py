"""httpx's client API over aiohttp's connection pool and C HTTP parser.

The adapters speak httpx (`httpx.AsyncClient`, `httpx.Response`, httpx's exceptions); this
transport carries their requests. httpx's own pool (httpcore, h11) walks every pooled connection
with a readability check on each request, which on the benchmark machine cost 1.1 ms of CPU per
upstream call at 64 concurrent requests; aiohttp's connector costs 0.25 ms (docs/performance.md).

What an adapter relies on, kept:
- a response is returned once its headers are in; the body is read by httpx, as it arrives, so
  a stream is relayed chunk by chunk;
- timeouts from the request's `timeout` extension: `connect` per connection attempt, `read` per
  read of the socket (so a stream may last longer than the read timeout while it keeps moving),
  `pool` for waiting for a free connection;
- failures raise httpx's exceptions: a timeout an `httpx.TimeoutException`, anything else an
  `httpx.TransportError`, so the adapters' classification (`timeout` / `connection`) is unchanged;
- nothing is shared between requests but connections: no cookie jar (a provider's cookie must
  never travel with another tenant's request), no redirects, no decompression (httpx decodes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx


def _httpx_error(exc: BaseException) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, TimeoutError):
        return httpx.TimeoutException(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("Server disconnected without sending a complete response.")
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        return httpx.ReadError(message)
    return httpx.TransportError(message)


_FAILURES = (aiohttp.ClientError, TimeoutError, OSError)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            async for chunk in content.iter_any():
                yield chunk
        except _FAILURES as exc:
            # aiohttp raises a cut body's error ahead of the bytes it had already received; those
            # bytes are the provider's last tokens, which the client must get (and be billed for)
            # before the error. Its reader has no public call for them: `_read_nowait` is the one
            # `readany` uses once no error is set (tests/providers/test_transport.py).
            if received := content._read_nowait(-1):
                yield received
            raise _httpx_error(exc) from exc

    async def aclose(self) -> None:
        # A body read to its end gives its connection back to the pool; one left half-read (the
        # client went away mid-stream) must not be reused: the rest of its body is still coming.
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (made on first use, inside the event loop that will serve it)."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _session_get(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry or 0,
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        try:
            body: bytes | httpx.AsyncByteStream | None = request.content or None
        except httpx.RequestNotRead:
            body = request.stream  # a streamed request body: aiohttp frames it itself
            request.headers.pop("transfer-encoding", None)
        try:
            response = await self._session_get().request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except _FAILURES as exc:
            raise _httpx_error(exc) from exc
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
