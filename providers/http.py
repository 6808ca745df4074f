"""The one shared `httpx.AsyncClient` of a process, and the adapters bound to it.

A client holds a connection pool tied to the event loop that created it, so it is made once per
loop: once per process under the ASGI server, once per test loop under pytest.
"""

import asyncio

import httpx
from django.conf import settings

from gateway_site.request_ids import correlation_id
from providers.adapters import ADAPTERS, Adapter

_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
_adapters: dict[tuple[asyncio.AbstractEventLoop, str], Adapter] = {}


def http_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        for stale in [other for other in _clients if other.is_closed()]:
            _clients.pop(stale)
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.GATEWAY_READ_TIMEOUT, connect=settings.GATEWAY_CONNECT_TIMEOUT
            ),
            limits=httpx.Limits(
                max_connections=settings.GATEWAY_MAX_CONNECTIONS,
                max_keepalive_connections=settings.GATEWAY_MAX_CONNECTIONS,
                keepalive_expiry=30,
            ),
            follow_redirects=False,
            event_hooks={"request": [_request_id_header]},
        )
        _clients[loop] = client
    return client


async def _request_id_header(request: httpx.Request) -> None:
    """Providers get the request's correlation id (`gateway_site.request_ids`) as `x-request-id`."""
    if value := correlation_id():
        request.headers["x-request-id"] = value


def adapter_for(wire_type: str) -> Adapter:
    loop = asyncio.get_running_loop()
    adapter = _adapters.get((loop, wire_type))
    if adapter is None:
        for stale in [key for key in _adapters if key[0].is_closed()]:
            _adapters.pop(stale)
        adapter = ADAPTERS[wire_type](http_client())
        _adapters[(loop, wire_type)] = adapter
    return adapter
