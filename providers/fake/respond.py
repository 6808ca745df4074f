"""The fake's behaviour shared by every endpoint: its settings and ledger, request bodies, errors,
and the timing and faults of answers and streams (the directives)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from providers.fake.content import request_id_new
from providers.fake.dialect import Dialect, Frames, dumps
from providers.fake.directives import Directive
from providers.fake.errors import ApiError, FakeConnectionDrop
from providers.fake.exchange import Exchange

SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]


@dataclass
class Settings:
    latency_ms: int
    chunk_delay_ms: int
    api_key: str | None
    directive: str = ""  # server-wide, under every request's own directive (normalized words)
    stats: dict = field(default_factory=lambda: {"requests": 0, "by_path": {}, "usage": no_usage()})

    def bill(self, *, prompt_tokens: int, completion_tokens: int = 0) -> None:
        """The ledger (`usage` in `GET /_fake/stats`): the tokens of every answer generated, as a
        provider bills them, whether or not the answer reached the client whole."""
        usage = self.stats["usage"]
        usage["prompt_tokens"] += prompt_tokens
        usage["completion_tokens"] += completion_tokens


def no_usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0}


async def error_send(*, ex: Exchange, dialect: Dialect, error: ApiError) -> None:
    request_id = request_id_new()
    body, headers = dialect.error(error=error, request_id=request_id)
    headers.append((dialect.request_id_header, request_id))
    await ex.respond(error.status, dumps(body), headers)


def json_body(*, ex: Exchange) -> dict:
    try:
        body = json.loads(ex.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "We could not parse the JSON body of your request. The API expects "
                       "a JSON payload.")
    return body


async def before_response(
    *, ex: Exchange, settings: Settings, dialect: Dialect, directive: Directive, tokens: int
) -> bool:
    """Apply what happens before any byte goes out; False when the client left while held."""
    delay = directive.delay_ms if directive.delay_ms is not None else settings.latency_ms
    await asyncio.sleep(delay / 1000)
    if directive.timeout:
        await ex.hold()
        if ex.left.is_set():
            return False
        raise FakeConnectionDrop("held for the whole hold limit")
    if directive.context_length_exceeded:
        raise dialect.context_error(tokens=tokens)
    if directive.quote_key:
        raise _key_quoted(ex=ex, directive=directive)
    if directive.status is not None and directive.status >= 400:
        raise ApiError(directive.status, retry_after=directive.retry_after)
    return True


def _key_quoted(*, ex: Exchange, directive: Directive) -> ApiError:
    """OpenAI's 401 quotes the key it was sent, masked ("Incorrect API key provided:
    sk-proj-****abcd"); a misbehaving proxy in front of a provider quotes it whole, as here."""
    scheme, _, bearer = ex.headers.get("authorization", "").partition(" ")
    key = next((k.strip() for k in (
        bearer if scheme.lower() == "bearer" else "", ex.headers.get("x-api-key", ""),
        ex.headers.get("api-key", ""), ex.headers.get("x-goog-api-key", ""), ex.query.get("key", ""),
    ) if k.strip()), "")
    status = directive.status if directive.status is not None and directive.status >= 400 else 401
    return ApiError(status, f"Incorrect API key provided: {key}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.", retry_after=directive.retry_after)


async def body_send(
    *, ex: Exchange, dialect: Dialect, payload: dict, directive: Directive
) -> None:
    """Send a JSON answer, or break it as asked: truncated JSON, or a connection cut mid-body."""
    body = dumps(payload)
    if directive.malformed:
        body = body[: len(body) // 2]
    headers = [(dialect.request_id_header, request_id_new())]
    if directive.disconnect_after is None and directive.stall_after is None:
        await ex.respond(200, body, headers)
        return
    await ex.start(200, [("content-type", "application/json"),
                         ("content-length", str(len(body)))] + headers)
    await ex.write(body[: len(body) // 2])
    if directive.stall_after is not None:
        await ex.hold()
    raise FakeConnectionDrop("disconnect_after/stall_after on a non-streamed answer")


async def _cut_check(*, ex: Exchange, directive: Directive, sent: int, total: int) -> None:
    """Drop or stall the stream once `sent` content events are out, if the directive says so."""
    if directive.stall_after is not None and sent == min(directive.stall_after, total):
        await ex.hold()
        raise FakeConnectionDrop("stall_after")
    if directive.disconnect_after is not None and sent == min(directive.disconnect_after, total):
        raise FakeConnectionDrop("disconnect_after")


async def stream_send(
    *, ex: Exchange, settings: Settings, frames: Frames, directive: Directive
) -> None:
    """Send a stream event by event, with the asked-for first-token wait, pacing and faults."""
    delay = directive.chunk_delay_ms
    delay = settings.chunk_delay_ms if delay is None else delay
    content = list(frames.content)
    if directive.malformed:
        content[:1] = [frames.bad]
    await ex.start(200, SSE_HEADERS)
    await ex.write(b"")  # daphne (Twisted) holds the headers back until the first body write
    for frame in frames.early:
        await ex.write(frame)
    await asyncio.sleep(directive.ttft_ms / 1000)
    for frame in frames.lead:
        await ex.write(frame)
    for index, frame in enumerate(content):
        await _cut_check(ex=ex, directive=directive, sent=index, total=len(content))
        if index:
            await asyncio.sleep(delay / 1000)
        if not await ex.write(frame):
            return
    await _cut_check(ex=ex, directive=directive, sent=len(content), total=len(content))
    for frame in frames.tail:
        await ex.write(frame)
    await ex.write(b"", more=False)
