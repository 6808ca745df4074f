"""Django's ASGI handler, without a thread of its own for each tenant API request.

Django runs every request inside asgiref's `ThreadSensitiveContext`, which gives the request a new
single-thread executor: the first thread-sensitive hop of the request (Django sends
`request_started` and closes the response through one) starts a thread, which ends with the
request. For the tenant API that hop is all there is (its database work runs on
`gateway_site.db_executor`'s long-lived threads), so starting and joining a thread per request
was a large share of its CPU time. Here the tenant API's requests run without that context: their
few thread-sensitive hops (signal receivers, `response.close()`, microseconds each) share the
process's one thread-sensitive thread. Every other request (admin, dashboards, operator API,
with sync views and ORM work that may take a while) keeps Django's thread per request.
"""

from __future__ import annotations

from django.core.handlers.asgi import ASGIHandler

from gateway_site.middleware import TENANT_API_PATHS


class GatewayASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") in TENANT_API_PATHS:
            await self.handle(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
