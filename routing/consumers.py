"""The WebSocket chat protocol at /v1/ws/chat (docs/websocket.md), on the same pipeline as HTTP.

One socket carries many requests at once, told apart by the client's ids. The socket is
authenticated on connect (an `Authorization: Bearer` header, or a dashboard user's session from
the same origin) or by a first `auth` message; never from the query string, where keys end up in
access logs. Every `chat.request` checks that credential again, as fresh as HTTP checks a key (the
same cached lookups, in the pipeline, first): a key revoked or expired, a tenant deactivated, a
member logged out or removed ends the socket with 4401, and the request is refused before any other
step. The consumer keeps the key's hash for this, never the key.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlparse

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import InterfaceError, OperationalError

from accounting.auth import ApiKeyContext, api_key_authenticate, api_key_authenticate_hashed
from accounting.members import member_session_authenticate, member_session_context
from kernel.credentials import api_key_hash, bearer_token
from kernel.errors import (
    AuthenticationFailed, AuthThrottled, DatabaseUnavailable, GatewayError, InvalidRequest,
)
from routing import pipeline
from routing.call import Call
from routing.responses_api import Conversation, responses_parse, responses_stream

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 8
CLOSE_UNAUTHENTICATED = 4401
CLOSE_THROTTLED = 4429  # too many failed authentications from this address (kernel/auth_throttle.py)
CLOSE_TRY_AGAIN_LATER = 4503  # as on a worker's shutdown: unavailable here for now, reconnect
REQUEST_FIELDS_EXCLUDED = {"type", "id"}
APIS = ("chat", "responses")  # a chat.request's `api`: the body's format and the events answered


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.auth: ApiKeyContext | None = None
        # How to check the credential again, per request: the key's hash or the member's session.
        self.credential: Callable[[], Awaitable[ApiKeyContext]] | None = None
        self.requests: dict[str, asyncio.Task] = {}
        await self.accept()
        if b"api_key" in self.scope.get("query_string", b"") or b"key=" in self.scope.get("query_string", b""):
            await self._fail(None, InvalidRequest(
                "Do not put API keys in the URL; send an Authorization header or an auth message."
            ))
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self._connect_auth()

    async def disconnect(self, code: int) -> None:
        for task in self.requests.values():
            task.cancel()  # the pipeline records each as cancelled, with what was streamed

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None or len(text_data) > settings.GATEWAY_MAX_BODY_BYTES:
            await self._fail(None, InvalidRequest("Send JSON text frames within the body size limit."))
            return
        try:
            message = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            await self._fail(None, InvalidRequest("The message is not valid JSON.", code="invalid_json"))
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self._fail(None, InvalidRequest("A message is a JSON object with a 'type'.", param="type"))
            return
        await self._dispatch(message)

    async def _dispatch(self, message: dict) -> None:
        kind = message["type"]
        if kind == "ping":
            await self._send({"type": "pong", "id": message.get("id")})
        elif kind == "auth":
            await self._auth_message(message)
        elif self.auth is None:
            await self._fail(message.get("id"), AuthenticationFailed(
                "Authenticate first: send {\"type\": \"auth\", \"api_key\": \"...\"}.", code="missing_api_key"
            ))
            await self.close(code=CLOSE_UNAUTHENTICATED)
        elif kind == "chat.request":
            await self._chat_start(message)
        elif kind == "chat.cancel":
            await self._chat_cancel(message)
        else:
            await self._fail(message.get("id"), InvalidRequest(f"Unknown message type '{kind}'.", param="type"))

    # --- authentication ---------------------------------------------------------------------------
    async def _connect_auth(self) -> None:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self.scope["headers"]}
        raw_key = bearer_token(headers)
        try:
            if raw_key:
                await self._key_authenticate(raw_key)
            elif _same_origin(headers):
                await self._member_authenticate()
        except GatewayError as exc:
            await self._auth_refused(None, exc)
            return
        except (OperationalError, InterfaceError):
            await self._database_unavailable()
            return
        if self.auth is not None:
            await self._send({"type": "auth.ok", "tenant": self.auth.tenant_slug})

    async def _key_authenticate(self, raw_key: str | None) -> None:
        self.auth = await api_key_authenticate(raw_key=raw_key, client=self._client(), door="websocket")
        self.credential = functools.partial(api_key_authenticate_hashed, hashed_key=api_key_hash(raw_key))

    async def _member_authenticate(self) -> None:
        """A logged-in member of a tenant; anyone else may still send an `auth` message."""
        user, session = self.scope.get("user"), self.scope.get("session")
        if user is None or not user.is_authenticated or session is None or not session.session_key:
            return
        self.auth = await member_session_context(session_key=session.session_key, user_id=user.pk)
        if self.auth is not None:
            self.credential = functools.partial(
                member_session_authenticate, session_key=session.session_key, user_id=user.pk
            )

    async def _auth_message(self, message: dict) -> None:
        try:
            await self._key_authenticate(str(message.get("api_key") or "") or None)
        except GatewayError as exc:
            await self._auth_refused(message.get("id"), exc)
            return
        except (OperationalError, InterfaceError):
            await self._database_unavailable()
            return
        await self._send({"type": "auth.ok", "tenant": self.auth.tenant_slug})

    async def _auth_refused(self, request_id, exc: GatewayError) -> None:
        """Say why and close: 4429 for an address refused after too many failures (its error event
        says how long), 4401 otherwise."""
        await self._fail(request_id, exc)
        await self.close(code=CLOSE_THROTTLED if isinstance(exc, AuthThrottled) else CLOSE_UNAUTHENTICATED)

    def _client(self) -> str:
        """The peer's address (the ASGI scope's client), for the throttle of failed authentications."""
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    async def _database_unavailable(self) -> None:
        """Authentication needs the database and it does not answer: say so, and close with 4503
        (as a worker's shutdown does), so the client reconnects rather than treating its key as bad."""
        await self._fail(None, DatabaseUnavailable())
        await self.close(code=CLOSE_TRY_AGAIN_LATER)

    # --- requests ---------------------------------------------------------------------------------
    async def _chat_start(self, message: dict) -> None:
        request_id = message.get("id")
        if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
            await self._fail(None, InvalidRequest("'id' must be a string of 1 to 128 characters.", param="id"))
            return
        if request_id in self.requests:
            await self._fail(request_id, InvalidRequest(f"A request with id '{request_id}' is in flight.", param="id"))
            return
        if len(self.requests) >= MAX_IN_FLIGHT:
            await self._fail(request_id, InvalidRequest(
                f"At most {MAX_IN_FLIGHT} requests may be in flight on one socket.", code="too_many_requests"
            ))
            return
        body = {key: value for key, value in message.items() if key not in REQUEST_FIELDS_EXCLUDED}
        api = body.pop("api", "chat")
        if api not in APIS:
            await self._fail(request_id, InvalidRequest("'api' must be chat or responses.", param="api"))
            return
        task = asyncio.ensure_future(self._chat_run(request_id, body, credential=self.credential, api=api))
        self.requests[request_id] = task
        task.add_done_callback(lambda _: self.requests.pop(request_id, None))

    async def _chat_run(self, request_id: str, body: dict, *, credential, api: str) -> None:
        """One request on the socket; a client that vanished mid-answer (a send on a closed socket
        raises `OSError`, as ASGI servers do) is an ordinary end: its stream is closed, which stops
        the provider and records it as cancelled, and one INFO line says so."""
        if api == "responses":
            call = Call(endpoint="responses", response_prefix="resp_")
            serve = self._responses_serve
        else:
            call, serve = Call(endpoint="chat.completions"), self._chat_serve
        try:
            await serve(call, request_id, body, credential=credential)
        except OSError:
            logger.info("request %s (%r on the socket): the client left", call.request_id, request_id)

    async def _chat_serve(self, call: Call, request_id: str, body: dict, *, credential) -> None:
        """Its credential is checked again by the pipeline, first, as HTTP checks a key per request
        (and cached as long): a dead one gets an `error` event and the socket is closed with 4401,
        which cancels the requests still running (recorded as such). The database being unreachable
        is an `error` event, and the socket stays open."""
        body["stream"] = True  # deltas as they come; usage always, for chat.done
        body["stream_options"] = {"include_usage": True}
        try:
            chunks = await pipeline.chat(call, credential=credential, parse=lambda: body, headers={})
        except GatewayError as exc:
            await self._refused(call, request_id, exc, credential=credential)
            return
        error = await self._relay(request_id, chunks)
        if error is not None:
            await self._fail(request_id, GatewayError(error.get("message", "")), call=call, body=error)
            return
        await self._send({
            "type": "chat.done",
            "id": request_id,
            "response_id": call.response_id,
            "model": call.deployment.target.upstream_model if call.deployment else call.requested_model,
            "provider": call.deployment.target.provider_name if call.deployment else None,
            "usage": {
                "prompt_tokens": call.recorded_tokens[0],
                "completion_tokens": call.recorded_tokens[1],
                "total_tokens": sum(call.recorded_tokens),
            },
            "cost_usd": str(call.cost_usd),
            "latency_ms": call.elapsed_ms(),
            "ttft_ms": call.ttft_ms,
        })

    async def _refused(self, call: Call, request_id: str, exc: GatewayError, *, credential) -> None:
        if call.auth is None and not isinstance(exc, DatabaseUnavailable):  # the credential died
            if self.credential is credential:  # not yet refused by another request on the socket
                self.auth = self.credential = None  # frames that arrive before the close are refused too
                await self._auth_refused(request_id, exc)
        else:
            await self._fail(request_id, exc, call=call)

    async def _responses_serve(self, call: Call, request_id: str, body: dict, *, credential) -> None:
        """A Responses API request (`"api": "responses"`): its typed events, each in a
        `response.event`, the last `response.completed` (or `.incomplete`, `.failed`); stored as
        over HTTP (`routing.responses_api`)."""
        body["stream"] = True
        conversation = Conversation()
        try:
            chunks = await pipeline.chat(call, credential=credential, headers={},
                                         parse=lambda: responses_parse(call, body, conversation))
        except GatewayError as exc:
            await self._refused(call, request_id, exc, credential=credential)
            return
        events = responses_stream(call, conversation, chunks)
        try:
            async for event in events:
                await self._send({"type": "response.event", "id": request_id, "event": event})
        finally:
            await events.aclose()

    async def _relay(self, request_id: str, chunks) -> dict | None:
        """Forward deltas; returns the error object if the stream ended with one."""
        try:
            async for chunk in chunks:
                if "error" in chunk:
                    return chunk["error"]
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content") or choice.get("finish_reason"):
                        await self._send({
                            "type": "chat.delta",
                            "id": request_id,
                            "content": delta.get("content") or "",
                            "finish_reason": choice.get("finish_reason"),
                        })
        finally:
            await chunks.aclose()
        return None

    async def _chat_cancel(self, message: dict) -> None:
        request_id = message.get("id")
        task = self.requests.get(request_id) if isinstance(request_id, str) else None  # a list id is unhashable
        if task is None:
            await self._fail(request_id, InvalidRequest("No request in flight with that id.", param="id"))
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await self._send({"type": "chat.cancelled", "id": message["id"]})

    # --- output -----------------------------------------------------------------------------------
    async def _fail(self, request_id, exc: GatewayError, *, call: Call | None = None, body: dict | None = None) -> None:
        error = body or exc.as_body()["error"]
        event = {"type": "error", "id": request_id, "status": exc.status, "error": error}
        if call is not None and call.recorded:
            event["response_id"] = call.response_id
        await self._send(event)

    async def _send(self, event: dict) -> None:
        await self.send(text_data=json.dumps(event, separators=(",", ":"), default=str))


def _same_origin(headers: dict[str, str]) -> bool:
    """Session auth only for pages of this site: a browser always sends Origin on WebSockets."""
    origin = headers.get("origin")
    return bool(origin) and urlparse(origin).netloc == headers.get("host")
