"""HTTP plumbing shared by the views: method checks, JSON 404s in OpenAI's error shape, the 503 of
a view that finds the database unreachable, and the event-stream response."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.template import loader
from django.views import csrf, defaults

from kernel.errors import DatabaseUnavailable, GatewayError, NotFound, PayloadTooLarge, error_response

logger = logging.getLogger(__name__)


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    error_class = "method_not_allowed"


def client_address(request: HttpRequest) -> str:
    """The caller's address: the ASGI scope's client (the peer, or with `--proxy-headers` the
    address the proxy forwarded); "" when the server reports none (a Unix socket)."""
    return request.META.get("REMOTE_ADDR") or ""


def allow_methods(*methods: str, shape=None):
    """Like Django's require_http_methods, but answering in the API's error format (`shape(exc)`
    gives another API's error body, e.g. Anthropic's on /v1/messages)."""

    def decorate(view):
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs):
            if request.method not in methods:
                exc = MethodNotAllowed(f"Method {request.method} is not allowed; use {', '.join(methods)}.")
                response = JsonResponse(shape(exc), status=exc.status) if shape else error_response(exc)
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return await view(request, *args, **kwargs)
            except (OperationalError, InterfaceError):  # the database is unreachable: say so
                return database_unavailable(request, shape=shape)

        return wrapper

    return decorate


def database_unavailable(request: HttpRequest, *, shape=None) -> HttpResponse:
    """A 503 with `Retry-After` for a request that found the database unreachable (logged with
    the exception being handled): the API's error shape (`shape` for another API's) on /v1/, a
    short page elsewhere (dashboards, admin, playground), rendered without the request's context,
    whose user and messages would ask the database again."""
    logger.warning("database unavailable for %s %s", request.method, request.path, exc_info=True)
    exc = DatabaseUnavailable()
    if shape is not None:
        response = JsonResponse(shape(exc), status=exc.status)
    elif request.path.startswith("/v1/"):
        response = error_response(exc)
    else:
        response = HttpResponse(loader.render_to_string("503.html"), status=exc.status)
    response["Retry-After"] = "1"
    return response


def server_error(request: HttpRequest):
    """A 500 that the API's clients can parse; pages keep Django's own error page."""
    if request.path.startswith("/v1/"):
        return error_response(GatewayError("The gateway failed to handle this request."))
    return defaults.server_error(request)


def api_not_found(request: HttpRequest, exception=None) -> JsonResponse:
    return error_response(NotFound(f"Unknown API route: {request.method} {request.path}"))


def csrf_failure(request: HttpRequest, reason: str = ""):
    """CSRF_FAILURE_VIEW: an unsafe method on an API route without a session's CSRF token (a
    browser session, or a method no API view takes) gets a 403 in the API's error shape."""
    if request.path.startswith("/v1/"):
        return error_response(CsrfFailed(f"CSRF check failed: {reason}. API clients send a bearer key, not a session."))
    return csrf.csrf_failure(request, reason=reason)


class CsrfFailed(GatewayError):
    status = 403
    type = "permission_error"
    code = "csrf_failed"
    error_class = "permission"


def body_limit(max_bytes: int):
    """Mark a view whose body may be larger than `GATEWAY_MAX_BODY_BYTES` (an upload) with its own
    limit in bytes: the tenant API's app (`gateway_site.api_app`) answers 413 past it without
    storing the body."""

    def mark(view):
        view.max_body_bytes = max_bytes
        return view

    return mark


def read_body(request: HttpRequest) -> bytes:
    """The request's body; past `GATEWAY_MAX_BODY_BYTES` the API's 413."""
    try:
        return request.body
    except RequestDataTooBig as exc:
        raise PayloadTooLarge(
            f"Request body is larger than the limit of {settings.GATEWAY_MAX_BODY_BYTES} bytes."
        ) from exc


class EventStream(StreamingHttpResponse):
    """A `text/event-stream` response of `events` (bytes, each a whole SSE event or more).

    Iterating the response iterates `events` itself: the server's `aclosing` (Django's handler,
    `gateway_site.api_app`) then closes `events` the moment the client goes away, and with it the
    pipeline's stream down to the provider's connection. A plain `StreamingHttpResponse` wraps its
    iterator in generators of its own, whose closing leaves `events` suspended until it is
    garbage-collected, while the provider goes on generating (and billing)."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(events, content_type="text/event-stream")
        self.events = events
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # nginx: pass each event on as it comes

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.events


class BinaryStream(StreamingHttpResponse):
    """A binary response (audio) of `chunks` as they come, none kept; iterated itself, so that the
    client going away closes `chunks` at once (see `EventStream`)."""

    def __init__(self, chunks: AsyncIterator[bytes], *, content_type: str) -> None:
        super().__init__(chunks, content_type=content_type)
        self.chunks = chunks
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks
