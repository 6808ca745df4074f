"""The fake's behaviour shared by every endpoint: its settings and ledger, request bodies, errors,
and the timing and faults of answers and streams (the directives)."""

from __future__ import annotations

import json
import time
from bisect import bisect_left
from dataclasses import dataclass, field

from providers.fake.content import Completion, request_id_new, token_pieces, tokens_count
from providers.fake.dialect import Dialect, Frames, dumps
from providers.fake.directives import Directive
from providers.fake.errors import ApiError, FakeConnectionDrop
from providers.fake.exchange import Exchange
from providers.fake.ledger import Ledger

SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]


@dataclass
class Settings:
    latency_ms: int
    chunk_delay_ms: int
    api_key: str | None
    directive: str = ""  # server-wide, under every request's own directive (normalized words)
    stats: dict = field(default_factory=lambda: {"requests": 0, "by_path": {}})
    ledger: Ledger = field(default_factory=Ledger)  # what was billed (`usage` in the stats)


# --- billing: the prompt once the 200 goes out, the completion as it is written ------------------


def billing_due(*, ex: Exchange, prompt_tokens: int, completion: Completion | None = None) -> None:
    """Say what the answer about to be sent bills; `body_send` and `stream_send` bill it as it
    goes out (nothing if it never does: an error, a client gone during the latency)."""
    entry = ex.entry
    if entry is None:  # not a chat or embeddings route
        return
    entry.due_prompt_tokens, entry.due_completion = prompt_tokens, completion
    if completion is not None:
        entry.model, entry.stream = completion.request.model, completion.request.stream


def _accepted_bill(*, ex: Exchange, completion_tokens: int) -> None:
    """The 200 is out: the prompt, and what was generated before the first frame."""
    if ex.entry is not None:
        ex.entry.bill(prompt_tokens=ex.entry.due_prompt_tokens, completion_tokens=completion_tokens)


def _whole_completion(*, ex: Exchange) -> int:
    completion = ex.entry.due_completion if ex.entry is not None else None
    return completion.billed_completion_tokens if completion is not None else 0


def frame_marks(*, completion: Completion | None, frames: int) -> list[int]:
    """The completion tokens generated once k of a stream's `frames` content frames are out
    (`marks[k]`); `marks[frames]` is the whole completion, as its usage reports it.

    A text answer's frames are its choices' pieces in turn (one each): a piece bills the tokens
    of its choice's text that start in it. Other streams (a tool call's argument deltas) spread
    the completion evenly over their frames.
    """
    if completion is None:
        return [0] * (frames + 1)
    total = completion.billed_completion_tokens
    choices = completion.choices
    if completion.request.tool_call or frames != sum(len(c.pieces) for c in choices):
        return [total * k // frames for k in range(frames + 1)] if frames else [total]
    marks = [0]
    for choice in choices:
        base, starts, offset = marks[-1], [], 0
        for token in token_pieces(text=choice.text):
            starts.append(offset)
            offset += len(token.encode())
        end = 0
        for piece in choice.pieces:
            end += len(piece.encode())
            marks.append(base + bisect_left(starts, end))
        if choice.pieces:
            marks[-1] = base + tokens_count(text=choice.text)  # exactly what the usage says
    return marks


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
    if not await ex.pause(delay / 1000):
        return False
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
        _accepted_bill(ex=ex, completion_tokens=_whole_completion(ex=ex))
        return
    await ex.start(200, [("content-type", "application/json"),
                         ("content-length", str(len(body)))] + headers)
    _accepted_bill(ex=ex, completion_tokens=_whole_completion(ex=ex))  # generated before sent
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
    """Send a stream event by event, with the asked-for first-token wait, pacing and faults.

    Each content frame written bills the tokens generated for it (`frame_marks`); generation
    stops at the next frame once the client is seen leaving, and no frame is written after."""
    delay = directive.chunk_delay_ms
    delay = settings.chunk_delay_ms if delay is None else delay
    content = list(frames.content)
    if directive.malformed:
        content[:1] = [frames.bad]
    marks = frame_marks(completion=ex.entry.due_completion if ex.entry is not None else None,
                        frames=len(content))
    await ex.start(200, SSE_HEADERS)
    _accepted_bill(ex=ex, completion_tokens=marks[0])
    await ex.write(b"")  # daphne (Twisted) holds the headers back until the first body write
    for frame in frames.early:
        await ex.write(frame)
    if not await ex.pause(directive.ttft_ms / 1000):
        return
    for frame in frames.lead:
        await ex.write(frame)
    for index, frame in enumerate(content):
        await _cut_check(ex=ex, directive=directive, sent=index, total=len(content))
        if not await ex.pause(delay / 1000 if index else 0):
            return
        written_at = time.time()
        await ex.write(frame)
        if ex.entry is not None:
            ex.entry.frame_bill(completion_tokens=marks[index + 1] - marks[index],
                                written_at=written_at)
    await _cut_check(ex=ex, directive=directive, sent=len(content), total=len(content))
    if ex.left.is_set():
        return
    for frame in frames.tail:
        await ex.write(frame)
    await ex.write(b"", more=False)
