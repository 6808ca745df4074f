"""The tenant API as its own ASGI application, routed before Django (`gateway_site/asgi.py`).

The tenant API's views are plain async functions that take a Django `HttpRequest` and return an
`HttpResponse` or a `StreamingHttpResponse`. Django's `ASGIHandler` would run each request inside
asgiref's `ThreadSensitiveContext` (a new single-thread executor per request), hop to a thread to
send `request_started` and again to close the response, and run its middleware (session, auth,
messages, CSRF...) through `sync_to_async`: all of it for requests that authenticate by key, keep
no session and do their database work on `kernel.db_executor`'s own threads.

`ApiApplication` serves the paths of its route table itself, in the event loop, and hands every
other request to `fallback` (Django, for the admin, dashboards, playground, operator API):

- the body is read like Django reads it (a spooled file), and the request is Django's public
  `ASGIRequest(scope, body_file)`; a view reads it with `request.body`, which raises
  `RequestDataTooBig` past `DATA_UPLOAD_MAX_MEMORY_SIZE` (`GATEWAY_MAX_BODY_BYTES`: the views
  answer 413);
- a client that goes away (`http.disconnect`) cancels the view, a stream included, as Django does;
- `request_started` and `request_finished` are sent in the event loop, where their receivers
  (Django's `close_old_connections`, `reset_queries`, `close_caches`) find no connection of the
  request's to look after; an async receiver would make `Signal.send` fail loudly here;
- the request id, the in-flight gauge and the access line are `kernel.request_ids`'; the log
  lines and metrics are taken once the response has gone out (`kernel.after_response`);
- Django's `SecurityMiddleware` hooks run inline: the HTTPS redirect and the security headers of
  the production settings (`SECURE_*`), the same as on Django's pages;
- an exception a view lets out is logged and answered 500 in the API's error shape, a
  `SuspiciousOperation` (a `Host` not in `ALLOWED_HOSTS` on a redirect) 400.

What a view needs to say itself: its methods (`kernel.http.allow_methods`, 405 with `Allow`,
and 503 for a database that is unreachable), and its errors (`kernel.errors`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing

from django.conf import settings
from django.core import signals
from django.core.exceptions import SuspiciousOperation
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse
from django.middleware.security import SecurityMiddleware
from django.urls import URLPattern

from kernel import request_ids
from kernel.after_response import after_response_begin, after_response_run
from kernel.errors import GatewayError, InvalidRequest, PayloadTooLarge, error_response

logger = logging.getLogger(__name__)

View = Callable[[HttpRequest], Awaitable[HttpResponse]]


class ApiApplication:
    """ASGI app: `routes` maps an exact path ("/v1/models") to its async view; `patterns` are Django
    URL patterns of paths with parameters (`v1/responses/<str:response_id>`), tried in order after
    the exact paths, whose view gets the parameters as keyword arguments; `fallback` gets the rest
    (HTTP of other paths, and anything that is not HTTP)."""

    def __init__(self, routes: Mapping[str, View], *, fallback, patterns: Sequence[URLPattern] = ()) -> None:
        self.routes = dict(routes)
        self.patterns = tuple(patterns)
        self.fallback = fallback
        # Its hooks only: the class is Django's, with the settings read once, as in MIDDLEWARE.
        self.security = SecurityMiddleware(get_response=lambda request: None)

    async def __call__(self, scope, receive, send) -> None:
        view, route = self._view(scope["path"]) if scope["type"] == "http" else (None, "")
        if view is None:
            await self.fallback(scope, receive, send)
            return
        limit = _body_limit(view)
        body_file = await _body_read(receive, limit=limit, declared=_content_length(scope))
        if body_file is None:
            return  # the client left before its request was complete
        if body_file is TOO_LARGE:
            await _response_send(error_response(PayloadTooLarge(
                f"Request body is larger than the limit of {limit} bytes.")), send)
            return
        signals.request_started.send(sender=ApiApplication, scope=scope)
        try:
            request = ASGIRequest(scope, body_file)
        except UnicodeDecodeError:
            body_file.close()
            await _response_send(error_response(InvalidRequest("The request's URL is not valid UTF-8.")), send)
            signals.request_finished.send(sender=ApiApplication)
            return
        try:
            await self._serve(view, request, receive, send, route=route)
        finally:
            request.close()  # and its body file

    def _view(self, path: str) -> tuple[View | None, str]:
        """The view of `path` and its route label for the access log and metrics (a pattern's own
        text, not the path: one label per route, whatever ids the paths carry)."""
        view = self.routes.get(path)
        if view is not None or not self.patterns:
            return view, path.removeprefix("/")
        for pattern in self.patterns:
            match = pattern.resolve(path.removeprefix("/"))
            if match is not None:
                return functools.partial(match.func, **match.kwargs), str(pattern.pattern)
        return None, ""

    async def _serve(self, view: View, request: ASGIRequest, receive, send, *, route: str) -> None:
        """Answer while listening for the client's disconnect, which cancels the answer."""

        async def answer() -> HttpResponse:
            pending = after_response_begin()  # this task's log lines and metrics: after the answer
            try:
                response = await self._respond(view, request, route=route)
                try:
                    await _response_send(response, send)
                except asyncio.CancelledError:
                    pass  # the client went away while the response was being sent
                return response
            finally:
                after_response_run(pending)

        # The listener first: on a disconnect it has completed, and the answer is cancelled.
        listener = asyncio.create_task(_disconnect_wait(receive))
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
        if answering.cancelled():
            signals.request_finished.send(sender=ApiApplication)
        else:
            answering.result().close()  # sends request_finished

    async def _respond(self, view: View, request: ASGIRequest, *, route: str) -> HttpResponse:
        ids, started = request_ids.request_begin(request)
        response = None
        try:
            try:
                response = self.security.process_request(request) or await view(request)
                response = self.security.process_response(request, response)
            except SuspiciousOperation as exc:
                logger.warning("refused %s %s: %s", request.method, request.path, exc)
                response = error_response(InvalidRequest("The request was refused as suspicious."))
            except Exception:  # noqa: BLE001 - the client gets the API's 500, the log the traceback
                logger.exception("Internal Server Error: %s %s", request.method, request.path)
                response = error_response(GatewayError("The gateway failed to handle this request."))
            return response
        finally:
            request_ids.request_finish(request, response, ids=ids, started=started, route=route)


# What `_body_read` returns for a body past its view's `max_body_bytes`.
TOO_LARGE = object()


def _body_limit(view) -> int | None:
    return getattr(getattr(view, "func", view), "max_body_bytes", None)  # a pattern's partial


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _body_read(receive, *, limit: int | None = None, declared: int | None = None):
    """The request body in a spooled file (in memory up to FILE_UPLOAD_MAX_MEMORY_SIZE, as Django
    reads it), or None if the client disconnected first. Past `limit` (the declared
    Content-Length, or the bytes as they come), nothing more is stored: the rest is read and
    dropped, so that the client, which sends its whole body before it reads an answer, gets the
    413 (`TOO_LARGE`)."""
    too_large = limit is not None and declared is not None and declared > limit
    body_file = None if too_large else tempfile.SpooledTemporaryFile(
        max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if body_file is not None:
                body_file.close()
            return None
        body = message.get("body")
        if body and body_file is not None:
            size += len(body)
            if limit is not None and size > limit:
                body_file.close()
                body_file = None
            else:
                body_file.write(body)
        if not message.get("more_body", False):
            if body_file is None:
                return TOO_LARGE
            body_file.seek(0)
            return body_file


async def _disconnect_wait(receive) -> None:
    """Returns when the client goes away (the only message ASGI sends after a complete body)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _response_send(response: HttpResponse, send) -> None:
    headers = [(name.encode("ascii"), value.encode("latin-1")) for name, value in response.items()]
    headers += [(b"set-cookie", cookie.output(header="").strip().encode("ascii"))
                for cookie in response.cookies.values()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    if not response.streaming:
        await send({"type": "http.response.body", "body": response.content})
        return
    async with aclosing(aiter(response)) as parts:
        async for part in parts:
            if part:
                await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body"})
