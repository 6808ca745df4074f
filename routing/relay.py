"""Relaying a provider's stream to the client, and recording it however it ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from kernel.errors import ProviderError
from kernel.graceful import cancel_reason
from guardrails.checks import GuardrailBlocked, StreamGuard
from providers.adapters import Adapter, Usage
from providers.selectors import Deployment
from routing.attempts import stream_failure_note, stream_finished
from routing.call import Call
from routing.record import record, usage_counted
from routing.structured import StructuredOutputInvalid, output_problem


def choice_texts(body: dict) -> list[str]:
    texts = []
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        part = choice.get("delta") or choice.get("message") or {}
        content = part.get("content") if isinstance(part, dict) else None
        if isinstance(content, str):
            texts.append(content)
    return texts


def first_chunk_sender(call: Call):
    """An attempt for a stream: it succeeds once a chunk carrying the answer has arrived (the
    chunks before it, a role or a filter annotation, are relayed first)."""

    def accepted() -> None:
        call.accepted = True

    async def send(adapter: Adapter, deployment: Deployment):
        call.accepted, call.usage_so_far = False, {}  # this attempt's, not a failed one's
        stream = adapter.chat_stream(call.payload, deployment.target, opened=accepted)
        held: list[dict] = []
        try:
            # OpenAI opens with a role-only chunk (Azure with a filter-only one): a provider that
            # fails after it has still not answered, so the attempt lasts until a chunk that does.
            while not held or not _carries_answer(held[-1]):
                held.append(await anext(stream))
                _counts_note(call, held[-1])  # e.g. Anthropic's input tokens, in message_start
        except StopAsyncIteration:
            await stream.aclose()
            raise adapter.malformed(deployment.target, "stream (no answer in its events)") from None
        except BaseException:
            await stream.aclose()
            raise
        return (_Prefixed(held[1:], stream) if len(held) > 1 else stream), held[0]

    return send


def _counts_note(call: Call, chunk: dict) -> None:
    """Keep what the provider has counted so far (cumulative: a later count replaces an earlier)."""
    so_far = chunk.get("usage_so_far")
    if so_far:
        call.usage_so_far.update(so_far)


def _carries_answer(chunk: dict) -> bool:
    """A chunk with something of the answer: content, a tool call, a finish reason, usage, an error
    (not counts so far: Anthropic sends its input tokens before it has answered anything)."""
    if chunk.get("usage") or "error" in chunk:
        return True
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and (
            choice.get("finish_reason")
            or any(value for name, value in (choice.get("delta") or {}).items() if name != "role")
        ):
            return True
    return False


class _Prefixed:
    """`stream` with the chunks already read put back in front; closing it closes `stream`."""

    def __init__(self, prefix: list[dict], stream: AsyncIterator[dict]) -> None:
        self._prefix, self._stream = prefix, stream

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        if self._prefix:
            return self._prefix.pop(0)
        return await anext(self._stream)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def stream_relay(call: Call, stream: AsyncIterator[dict], first: dict) -> AsyncIterator[dict]:
    """Relay upstream chunks to the client and record the outcome however the stream ends."""
    wants_usage = bool((call.payload.get("stream_options") or {}).get("include_usage"))
    texts: list[str] = []  # what the client was sent
    # What the provider sent, guardrails' holds and redactions included: the client's text itself
    # when no output guardrail applies.
    read: list[str] = []
    status, http_status, error_class = "success", 200, ""
    # None when no output guardrail applies.
    guard = StreamGuard.for_rules(call.guard, events=call.guard_events, model=call.requested_model)
    try:
        chunk: dict | None = first
        while chunk is not None:
            _counts_note(call, chunk)
            if guard is not None:
                read.extend(choice_texts(chunk))
                guard.chunk_check(chunk)  # holds back a short tail, redacts, raises on a block
            relayed = _chunk_relay(call, chunk, texts, wants_usage=wants_usage)
            if relayed is not None:
                yield relayed
            chunk = await anext(stream, None)
        tail = guard.finish() if guard is not None else None
        if tail is not None:
            yield _chunk_relay(call, tail, texts, wants_usage=wants_usage)
        if call.schema is not None and not call.tool_called:
            problem = output_problem("".join(texts), call.schema)
            if problem is not None:  # a stream cannot be repaired once sent: end it with an error
                raise StructuredOutputInvalid(f"The streamed answer does not match the requested JSON format: {problem}.")
        if wants_usage and call.usage is None:
            yield _usage_chunk(call, read if guard is not None else texts)
    except ProviderError as exc:
        status, http_status, error_class = "error", exc.status, exc.error_class
        await stream_failure_note(call.plan, call.deployment, exc)
        yield exc.as_body()
    except (StructuredOutputInvalid, GuardrailBlocked) as exc:
        status, http_status, error_class = "error", exc.status, exc.error_class
        yield exc.as_body()
    except (asyncio.CancelledError, GeneratorExit):
        status, error_class = "cancelled", cancel_reason()  # the client left, or a worker's shutdown deadline
        raise
    except Exception:
        status, http_status, error_class = "error", 500, "internal"
        raise
    finally:
        if call.deployment is not None:  # None: a cached answer replayed
            stream_finished(call.deployment)
        await stream.aclose()
        await record(
            call,
            status=status,
            completion_text="".join(texts),
            read_text="".join(read) if guard is not None else None,
            http_status=http_status,
            error_class=error_class,
        )


def _chunk_relay(call: Call, chunk: dict, texts: list[str], *, wants_usage: bool) -> dict | None:
    if chunk.pop("usage_so_far", None) is not None and not chunk.get("choices") and not chunk.get("usage"):
        return None  # a chunk of counts so far only: the gateway's own (`_counts_note`)
    usage = Usage.from_openai(chunk.get("usage"))
    if usage is not None:
        call.usage = usage
    if any(isinstance(c, dict) and (c.get("delta") or {}).get("tool_calls") for c in chunk.get("choices") or ()):
        call.tool_called = True
    piece = "".join(choice_texts(chunk))
    if piece:
        texts.append(piece)
        if call.ttft_ms is None:
            call.ttft_ms = call.elapsed_ms()
    chunk["id"] = call.response_id
    if wants_usage:
        chunk.setdefault("usage", None)
        return chunk
    chunk.pop("usage", None)
    return chunk if chunk.get("choices") else None


def _usage_chunk(call: Call, read: list[str]) -> dict:
    """A final usage chunk for a client that asked for one when the provider sent none: what the
    record will say (the provider's counts so far, estimates for the rest)."""
    counted = usage_counted(call, read_text="".join(read))
    prompt, completion = counted.prompt_tokens, counted.completion_tokens
    return {
        "id": call.response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": call.deployment.target.upstream_model if call.deployment else call.requested_model,
        "choices": [],
        "usage": Usage(prompt_tokens=prompt, completion_tokens=completion).as_openai(),
    }
