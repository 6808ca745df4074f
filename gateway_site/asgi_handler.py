"""Django's ASGI handler, without thread hops for the tenant API's requests.

Django runs every request inside asgiref's `ThreadSensitiveContext`, which gives the request a new
single-thread executor, and makes two thread-sensitive hops per request: one to send
`request_started`, one for `response.close()` (which sends `request_finished`). Their receivers
(Django's `close_old_connections`, `reset_queries`, `close_caches`, `reset_urlconf`) look after
the database connections of the thread they run on, the request's own.

The tenant API (`TENANT_API_PATHS`) does all its database work on `gateway_site.db_executor`'s
long-lived threads, which look after their own connections, so for it the hops are pure cost:
starting and joining a thread per request was once a large share of its CPU, and the two hops
that remained cost about 145 us of CPU each. Its requests therefore run without that context and
send both signals in the event loop itself, where the receivers find no connection to look
after. This holds while every receiver of those signals is a plain function (Django's are): an
async receiver would make `Signal.send` fail in the event loop, loudly, on every API request.
Its log lines and metrics are taken once the response has gone to the server
(`gateway_site.after_response`).

Every other request (admin, dashboards, operator API, with sync views and ORM work that may take
a while) keeps Django's handling, thread per request included.
"""

from __future__ import annotations

import asyncio

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix

from gateway_site.after_response import after_response_begin, after_response_run
from gateway_site.middleware import TENANT_API_PATHS


class GatewayASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") in TENANT_API_PATHS:
            await self._tenant_api(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _tenant_api(self, scope, receive, send) -> None:
        """What `ASGIHandler.handle` does (read the body, build the request, answer it while
        listening for the client's disconnect, which cancels the view), with the signals and
        `response.close()` run in the event loop instead of on a thread."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def answer():
            pending = after_response_begin()  # this task's log lines and metrics: after the answer
            try:
                response = await self.run_get_response(request)
                try:
                    await self.send_response(response, send)
                except asyncio.CancelledError:
                    pass  # the client went away while the response was being sent
                return response
            finally:
                after_response_run(pending)

        # The listener first: on a disconnect it has completed, and the answer is cancelled.
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        answering = asyncio.create_task(answer())
        try:
            await asyncio.wait((listener, answering), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listener, answering):
                if not task.done():
                    task.cancel()
                    try:
                        await task
                    except asyncio.CancelledError:
                        pass
        if listener.done() and not listener.cancelled():
            try:
                listener.result()
            except RequestAborted:
                pass
        if answering.cancelled():
            signals.request_finished.send(sender=self.__class__)
        else:
            answering.result().close()
        body_file.close()
