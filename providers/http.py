"""The one shared `httpx.AsyncClient` of a process, and the adapters bound to it.

A client holds a connection pool tied to the event loop that created it, so it is made once per
loop: once per process under the ASGI server, once per test loop under pytest. Its requests go
over aiohttp's pool (`providers.transport`), which costs a quarter of httpx's own per call. The
adapters hand their requests to the client's transport themselves (`Adapter._open`, which also
sets the correlation id as `x-request-id`); the client holds their defaults (timeouts, headers).
"""

from collections.abc import AsyncGenerator
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from django.conf import settings

from gateway_site.loops import PerLoop
from providers.adapters import ADAPTERS, Adapter
from providers.transport import AiohttpTransport

# A provider's cookies are never kept: one tenant's request must not carry state from another's.
_NO_COOKIES = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
_adapters: dict[str, PerLoop[Adapter]] = {}


def http_client() -> httpx.AsyncClient:
    return _clients.get()[0]


def _client_make() -> tuple[httpx.AsyncClient, AsyncGenerator]:
    limits = httpx.Limits(
        max_connections=settings.GATEWAY_MAX_CONNECTIONS,
        max_keepalive_connections=settings.GATEWAY_MAX_CONNECTIONS,
        keepalive_expiry=30,
    )
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(
            settings.GATEWAY_READ_TIMEOUT, connect=settings.GATEWAY_CONNECT_TIMEOUT
        ),
        transport=AiohttpTransport(limits=limits),
        cookies=_NO_COOKIES,
        follow_redirects=False,
    )
    return client, _closed_with_loop(client)


_clients: PerLoop[tuple[httpx.AsyncClient, AsyncGenerator]] = PerLoop(_client_make)


def _closed_with_loop(client: httpx.AsyncClient) -> AsyncGenerator:
    """Close `client` when its event loop shuts down, while the loop still runs.

    Returns an async generator already standing at its `yield`: the loop took note of it at its
    first step, and its shutdown (asyncio.run, uvicorn, asgiref's loops, pytest-asyncio) finalizes
    such generators, which closes the client's connections cleanly instead of leaving them to
    the garbage collector with an "unclosed" warning.
    """

    async def closer() -> AsyncGenerator:
        try:
            yield
        finally:
            await client.aclose()

    generator = closer()
    try:
        generator.asend(None).send(None)
    except StopIteration:
        pass
    return generator


def adapter_for(wire_type: str) -> Adapter:
    if wire_type not in _adapters:
        _adapters[wire_type] = PerLoop(lambda: ADAPTERS[wire_type](http_client()))
    return _adapters[wire_type].get()
