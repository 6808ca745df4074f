"""Graceful shutdown of one ASGI worker: drain what is in flight, then cut what is left cleanly.

`GracefulApplication` wraps the whole ASGI application (HTTP and WebSocket) and keeps a
`Flight` for every HTTP request and WebSocket connection that is being served. The worker
(`gateway_site/worker.py`) calls `drain.begin()` on SIGTERM, once it has stopped listening:

- a new HTTP request on a kept-alive connection gets a 503 `server_shutting_down` and
  `Connection: close`; a new WebSocket is refused; a new `chat.request` on an open socket gets an
  `error` event; a socket with no request in flight is closed with 4503;
- in-flight requests, SSE streams and WebSocket requests run on until they finish;
- the first request of a connection the worker accepted before it stopped listening is served,
  not refused: the client connected while the worker still took connections, and its request
  can reach the worker after the drain began (a SIGHUP reload under steady traffic hits this).
  The servers mark such a request with `FIRST_ON_CONNECTION` in its scope;
- every response started during the drain carries `Connection: close`, so the client's next
  request goes to a worker that stays.

If they have not finished by the deadline, the worker calls `drain.expire()`: each remaining
application instance is told that its client went away (`http.disconnect` /
`websocket.disconnect`), which is the path Django and the consumer already take for a client that
leaves: the view or stream is cancelled and the pipeline writes its UsageRecord as `cancelled`
with what was streamed so far (`cancel_reason()` tells it why). The client, who is still
connected, then gets a clean ending from here: an SSE stream gets a final error event and
`data: [DONE]`, a request that had no answer yet a 503, a socket an `error` event per request in
flight and a 4503 close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from contextvars import ContextVar

logger = logging.getLogger(__name__)

SHUTDOWN_CODE = "server_shutting_down"
SHUTDOWN_MESSAGE = "The gateway is restarting; retry the request."
# WebSocket close code for "this worker is shutting down; reconnect": 4503, in the private range
# like the consumer's 4401, since daphne (autobahn) sends no registered code but 1000 (1012,
# "Service Restart", would be the IANA one).
CLOSE_SERVICE_RESTART = 4503

# Scope key the worker's server sets on the first HTTP request of a connection (see above).
FIRST_ON_CONNECTION = "gateway.first_on_connection"

_flight: ContextVar[Flight | None] = ContextVar("gateway_flight", default=None)


def cancel_reason() -> str:
    """Why the current request is being cancelled: the error class its UsageRecord gets."""
    flight = _flight.get()
    return "server_shutdown" if flight is not None and flight.cut else "client_disconnected"


def shutdown_status() -> int:
    """HTTP status recorded for a request cancelled before its answer started."""
    flight = _flight.get()
    return 503 if flight is not None and flight.cut else 499


def _error_body() -> dict:
    return {"error": {"message": SHUTDOWN_MESSAGE, "type": "server_error", "param": None, "code": SHUTDOWN_CODE}}


class Flight:
    """One HTTP request or WebSocket connection being served by this process."""

    __slots__ = ("kind", "cut", "closed", "streaming", "started", "requests", "_receive", "_send", "_receiving")

    def __init__(self, kind: str, receive, send) -> None:
        self.kind = kind
        self.cut = False  # past the deadline: the application was told the client left
        self.closed = False  # the client has its ending (response complete, socket closed)
        self.streaming = False  # an SSE response has started
        self.started = False  # response headers (or the WebSocket accept) went out
        self.requests: set[str] = set()  # WebSocket request ids in flight
        self._receive, self._send = receive, send
        self._receiving: asyncio.Task | None = None

    # --- what the application sees ---------------------------------------------------------------
    async def receive(self) -> dict:
        while True:
            message = await self._receive_or_cut()
            if self.kind == "websocket" and message["type"] == "websocket.receive":
                if await self._ws_request_seen(message):
                    continue  # answered here: the worker takes no new requests
            return message

    async def _receive_or_cut(self) -> dict:
        if self.cut:
            return {"type": f"{self.kind}.disconnect", "code": CLOSE_SERVICE_RESTART}
        self._receiving = asyncio.current_task()
        try:
            return await self._receive()
        except asyncio.CancelledError:
            if not self.cut:
                raise
            self._receiving.uncancel()  # our own cancel (see `expire`): the client "left"
            return {"type": f"{self.kind}.disconnect", "code": CLOSE_SERVICE_RESTART}
        finally:
            self._receiving = None

    async def send(self, message: dict) -> None:
        if self.closed:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            if drain.draining and self.kind == "http":
                message = _closing(message)
            for name, value in message.get("headers") or ():
                if value.startswith(b"text/event-stream") and name.lower() == b"content-type":
                    self.streaming = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.closed = True
        elif kind == "websocket.accept":
            self.started = True
        elif kind == "websocket.close":
            self.closed = True
        elif kind == "websocket.send" and message.get("text"):
            self._ws_event_seen(message["text"])
        await self._send(message)
        if self.kind == "websocket" and drain.draining and not self.requests and not self.closed:
            await self.close_socket()

    # --- WebSocket bookkeeping: which requests are in flight -------------------------------------
    async def _ws_request_seen(self, message: dict) -> bool:
        text = message.get("text") or ""
        if '"chat.request"' not in text:
            return False
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):  # the consumer answers the bad frame
            return False
        if not isinstance(event, dict) or event.get("type") != "chat.request" or not isinstance(event.get("id"), str):
            return False
        if drain.draining:
            await self._ws_refuse(event["id"])
            return True
        self.requests.add(event["id"])
        return False

    def _ws_event_seen(self, text: str) -> None:
        if not self.requests or text.startswith('{"type":"chat.delta"'):
            return
        try:
            event = json.loads(text)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("type") in ("chat.done", "chat.cancelled", "error"):
            self.requests.discard(event.get("id"))

    async def _ws_refuse(self, request_id) -> None:
        event = {"type": "error", "id": request_id, "status": 503, **_error_body()}
        await self._send({"type": "websocket.send", "text": json.dumps(event, separators=(",", ":"))})

    async def close_socket(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._send({"type": "websocket.close", "code": CLOSE_SERVICE_RESTART})

    # --- the deadline ------------------------------------------------------------------------------
    def expire(self) -> None:
        self.cut = True
        if self._receiving is not None:
            self._receiving.cancel()

    async def finish(self) -> None:
        """After the application returned: give a client cut at the deadline a clean ending."""
        if not self.cut or self.closed:
            return
        if self.kind == "websocket":
            for request_id in sorted(self.requests):
                await self._ws_refuse(request_id)
            await self.close_socket()
        elif self.streaming:
            event = b"data: " + json.dumps(_error_body(), separators=(",", ":")).encode() + b"\n\n"
            await self._send({"type": "http.response.body", "body": event + b"data: [DONE]\n\n"})
        elif self.started:
            await self._send({"type": "http.response.body"})
        else:
            await _refuse_http(self._send)
        self.closed = True


class Drain:
    """The shutdown state of this process and the flights it is waiting for."""

    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self.flights: set[Flight] = set()
        self._idle: asyncio.Event | None = None

    def add(self, flight: Flight) -> None:
        self.flights.add(flight)

    def discard(self, flight: Flight) -> None:
        self.flights.discard(flight)
        if not self.flights and self._idle is not None:
            self._idle.set()

    async def begin(self) -> None:
        """Take no new requests; close the sockets that have none in flight."""
        self.draining = True
        for flight in list(self.flights):
            if flight.kind == "websocket" and not flight.requests and flight.started:
                await flight.close_socket()

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight, False if `timeout` seconds passed first."""
        if not self.flights:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout, 0))
        except TimeoutError:
            return False
        return True

    def expire(self) -> None:
        """The deadline: cut everything still in flight (each is recorded as it unwinds)."""
        self.expired = True
        for flight in list(self.flights):
            flight.expire()


drain = Drain()

# After the deadline, how long cut requests get to unwind and write their records.
CUT_SECONDS = 5.0


_drain_hooks: list[Callable[[], None]] = []


def at_drain(hook: Callable[[], None]) -> Callable[[], None]:
    """Run `hook` in the event loop when a worker's drain has let its requests finish, before it
    waits for the tasks they left (a decorator)."""
    _drain_hooks.append(hook)
    return hook


async def worker_drain(*, grace: float, keep: set[asyncio.Task] = frozenset()) -> None:
    """A worker's SIGTERM, once it has stopped listening: refuse new requests, let in-flight ones
    run for `grace` seconds, cut what is left, then wait for the tasks requests left behind (usage
    records still being written) other than `keep` (the server's own). Both ASGI servers' workers
    (gateway_site/worker.py, gateway_site/uvicorn_worker.py) end this way."""
    started = time.monotonic()
    await drain.begin()
    logger.info("worker %s draining: %d in flight, deadline %ss", os.getpid(), len(drain.flights), grace)
    if not await drain.wait_idle(grace):
        logger.warning("worker %s deadline reached: cutting %d in flight", os.getpid(), len(drain.flights))
        drain.expire()
        await drain.wait_idle(CUT_SECONDS)
    for hook in _drain_hooks:
        try:
            hook()
        except Exception:  # noqa: BLE001 - the drain goes on
            logger.exception("drain hook %s failed", getattr(hook, "__qualname__", hook))
    others = asyncio.all_tasks() - {asyncio.current_task(), *keep}
    if others:
        _, pending = await asyncio.wait(others, timeout=CUT_SECONDS)
        for task in pending:
            logger.warning("task still running at exit: %r", task)
    logger.info("worker %s drained in %.2fs", os.getpid(), time.monotonic() - started)


def _closing(start: dict) -> dict:
    """`start` (an http.response.start) with `Connection: close` among its headers."""
    headers = list(start.get("headers") or ())
    if not any(name.lower() == b"connection" and value.lower() == b"close" for name, value in headers):
        headers.append((b"connection", b"close"))
    return {**start, "headers": headers}


async def _refuse_http(send) -> None:
    body = json.dumps(_error_body()).encode()
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"retry-after", b"1"),
        ],
    })
    await send({"type": "http.response.body", "body": body})


class GracefulApplication:
    """ASGI middleware: counts what is in flight and lets `drain` end it gracefully."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.application(scope, receive, send)
            return
        if drain.draining and not (kind == "http" and scope.get(FIRST_ON_CONNECTION) and not drain.expired):
            await self._refuse(kind, receive, send)
            return
        flight = Flight(kind, receive, send)
        token = _flight.set(flight)
        drain.add(flight)
        try:
            await self.application(scope, flight.receive, flight.send)
            await flight.finish()
        finally:
            drain.discard(flight)
            _flight.reset(token)

    @staticmethod
    async def _refuse(kind: str, receive, send) -> None:
        if kind == "http":
            await _refuse_http(send)
        else:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": CLOSE_SERVICE_RESTART})
