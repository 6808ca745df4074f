"""The one `UpstreamClient` of an event loop, and the adapters bound to it.

A client holds a connection pool tied to the event loop that created it, so it is made once per
loop: once per process under the ASGI server, once per test loop under pytest. Every upstream
provider call goes through it (`providers/transport.py`); the adapters add their headers, the
correlation id as `x-request-id` and a target's own read timeout (`Adapter._open`).
"""

from collections.abc import AsyncGenerator

from django.conf import settings

from kernel.loops import PerLoop
from providers.adapters import ADAPTERS, Adapter
from providers.transport import Timeouts, UpstreamClient

_adapters: dict[str, PerLoop[Adapter]] = {}


def http_client() -> UpstreamClient:
    return _clients.get()[0]


def _client_make() -> tuple[UpstreamClient, AsyncGenerator]:
    client = UpstreamClient(
        timeouts=Timeouts(
            connect=settings.GATEWAY_CONNECT_TIMEOUT,
            read=settings.GATEWAY_READ_TIMEOUT,
            pool=settings.GATEWAY_READ_TIMEOUT,
        ),
        max_connections=settings.GATEWAY_MAX_CONNECTIONS,
        keepalive_expiry=30,
    )
    return client, _closed_with_loop(client)


_clients: PerLoop[tuple[UpstreamClient, AsyncGenerator]] = PerLoop(_client_make)


def _closed_with_loop(client: UpstreamClient) -> AsyncGenerator:
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
