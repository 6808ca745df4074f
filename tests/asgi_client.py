"""A test client of the production ASGI application, in process.

`gateway_site.asgi.application` is what the servers run: the tenant API's paths
(`routing/urls.py` `tenant_api_patterns`) go to `gateway_site/api_app.py` `ApiApplication`, the
rest on to Django's handler. Django's test client would send the tenant API through Django's
handler and middleware, which production never does; this one sends every request through the
real application with httpx's public ASGI transport. The request methods take Django's test
client's arguments (`post(path, data, content_type=..., headers=...)`, `get(path, params,
headers=...)`), and answer an `httpx.Response`: headers are `response.headers[...]`, and a
streamed answer comes back whole (the transport collects it), so a test that needs a client to
leave mid-stream runs a real server.
"""

from __future__ import annotations

import json

import httpx
from asgiref.sync import async_to_sync

BASE_URL = "http://testserver"  # Django's test host, in ALLOWED_HOSTS under pytest-django
JSON = "application/json"


def _encoded(data, content_type: str) -> bytes:
    """The body as Django's test client encodes it: a dict or a list as JSON for a JSON type."""
    if data is None:
        return b""
    if isinstance(data, (dict, list)) and content_type.startswith(JSON):
        return json.dumps(data).encode()
    return data.encode() if isinstance(data, str) else data


class _Requests:
    """Django's test client's request methods over `_send(method, path, **httpx_arguments)`."""

    def get(self, path: str, data=None, *, headers=None):
        return self._send("GET", path, params=data, headers=headers)

    def post(self, path: str, data=None, content_type: str = JSON, *, headers=None):
        return self.generic("POST", path, data, content_type, headers=headers)

    def put(self, path: str, data=None, content_type: str = JSON, *, headers=None):
        return self.generic("PUT", path, data, content_type, headers=headers)

    def delete(self, path: str, data=None, content_type: str = JSON, *, headers=None):
        return self.generic("DELETE", path, data, content_type, headers=headers)

    def generic(self, method: str, path: str, data=None, content_type: str = JSON, *, headers=None):
        headers = {"content-type": content_type, **(headers or {})}
        return self._send(method, path, content=_encoded(data, content_type), headers=headers)


class ApiClient(_Requests):
    """Awaitable requests to `gateway_site.asgi.application`, from `client` (the scope's address)."""

    def __init__(self, *, client: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.client = client

    async def _send(self, method: str, path: str, **arguments) -> httpx.Response:
        from gateway_site.asgi import application  # sets Django up: imported once the tests run

        transport = httpx.ASGITransport(app=application, client=self.client)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            return await http.request(method, path, **arguments)


class SyncApiClient(_Requests):
    """The same for a sync test: each request runs in an event loop of its own (`async_to_sync`),
    as Django's sync test client runs an async view."""

    def __init__(self, *, client: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.client = client

    def _send(self, method: str, path: str, **arguments) -> httpx.Response:
        return async_to_sync(ApiClient(client=self.client)._send)(method, path, **arguments)
