"""Request ids: one per request, in every log line of that request, returned and sent upstream.

Two ids travel with a request:

- the gateway's own `request_id`, a UUID made here, which the UsageRecord keeps (unique there);
- the correlation id: the client's `x-request-id` when it sent a valid one, else the gateway's id.
  It is returned as `x-request-id`, written as `request_id` in every log line, and sent to the
  provider as `x-request-id`. A client may reuse its id; the records stay unique.

The ids live in a context variable, so every coroutine and thread (sync_to_async copies the
context) working for the request sees them, including provider attempts and stream relays.
A client id is accepted only if it is 1-128 characters of letters, digits and `._:-/+=@`, so it
cannot forge log lines or headers; anything else is ignored and the gateway's id is used.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from kernel import metrics
from kernel.after_response import after_response

logger = logging.getLogger("gateway.access")

HEADER = "x-request-id"
GATEWAY_HEADER = "x-gateway-request-id"
CLIENT_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


@dataclass
class RequestIds:
    request_id: uuid.UUID
    client_id: str = ""
    taken: bool = False  # a Call has made this its record's id

    @property
    def correlation_id(self) -> str:
        return self.client_id or str(self.request_id)


_current: ContextVar[RequestIds | None] = ContextVar("gateway_request_ids", default=None)


def client_id_clean(value: str | None) -> str:
    return value if value and CLIENT_ID.fullmatch(value) else ""


def request_ids_begin(client_header: str | None = None) -> RequestIds:
    """Start a request's ids in the current context (the HTTP middleware does this)."""
    ids = RequestIds(request_id=uuid.uuid4(), client_id=client_id_clean(client_header))
    _current.set(ids)
    return ids


def request_ids_current() -> RequestIds | None:
    return _current.get()


def request_id_take() -> uuid.UUID:
    """The record id for a new `Call`: the HTTP request's, or a new one for each further call in
    the same context (each message of a WebSocket), which then becomes the current id."""
    ids = _current.get()
    if ids is None or ids.taken:
        ids = request_ids_begin(ids.client_id if ids is not None else None)
    ids.taken = True
    return ids.request_id


def correlation_id() -> str:
    ids = _current.get()
    return ids.correlation_id if ids is not None else ""


def request_begin(request: HttpRequest) -> tuple[RequestIds, float]:
    """A request starts: its ids, the in-flight gauge, the clock of its access line."""
    metrics.IN_FLIGHT.inc()
    return request_ids_begin(request.headers.get(HEADER)), time.perf_counter()


def request_finish(request: HttpRequest, response: HttpResponse | None, *, ids: RequestIds, started: float,
                   route: str) -> None:
    """Its response is ready (None: the request was cancelled before it had one): `x-request-id`,
    and the count and access line once the response has gone out (`after_response`)."""
    metrics.IN_FLIGHT.dec()
    if response is None:
        return
    if HEADER not in response:
        response[HEADER] = ids.correlation_id
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    after_response(functools.partial(_access_observe, request.method, route, response.status_code, duration_ms))


class RequestIdMiddleware:
    """Django's pages and the operator API: start the request's ids, return `x-request-id`, count
    the response, log one access line (the tenant API's app does the same: `gateway_site.api_app`).

    The access line and the count are taken when the response starts (for a stream: when its
    headers go out), with the route pattern rather than the path, so unknown paths add no series.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        ids, started = request_begin(request)
        response = self.get_response(request)
        request_finish(request, response, ids=ids, started=started, route=_route(request))
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        ids, started = request_begin(request)
        response = await self.get_response(request)
        request_finish(request, response, ids=ids, started=started, route=_route(request))
        return response


def _route(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None else "unmatched"


def _access_observe(method: str, route: str, status: int, duration_ms: float) -> None:
    """The response's count and access line (after the response: `after_response`)."""
    metrics.http_response_observe(method=method, route=route, status=status)
    logger.info("http %s %s %s", method, route, status,
                extra={"method": method, "route": route, "status": status, "duration_ms": duration_ms})
