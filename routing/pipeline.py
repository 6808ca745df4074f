"""The request pipeline: one gateway request in, provider attempts, one UsageRecord out.

auth -> validate -> route -> attempt -> respond -> record. The HTTP views (and later the
Anthropic-compatible view and the WebSocket consumer) call `chat` and `embeddings`; each step is
one call into the app that owns it. Nothing here holds a database connection or transaction
while a provider is awaited.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from accounting.auth import ApiKeyContext, api_key_authenticate, bearer_token
from accounting.pricing import cost_compute
from accounting.services import usage_record_create
from accounting import tokens
from gateway_site.errors import GatewayError, ProviderError
from providers.adapters import Adapter, Usage
from providers.selectors import Deployment
from routing import validation
from routing.attempts import AttemptLog, attempts_run, stream_failure_note
from routing.selection import RoutePlan, route_hints, route_select

logger = logging.getLogger(__name__)

_background: set[asyncio.Task] = set()


@dataclass
class Call:
    """What the pipeline knows about one gateway request, from arrival to its UsageRecord."""

    endpoint: str
    request_id: uuid.UUID = field(default_factory=uuid.uuid4)
    started: float = field(default_factory=time.perf_counter)
    auth: ApiKeyContext | None = None
    payload: dict = field(default_factory=dict)
    requested_model: str = ""
    stream: bool = False
    plan: RoutePlan | None = None
    deployment: Deployment | None = None
    log: AttemptLog = field(default_factory=AttemptLog)
    usage: Usage | None = None
    ttft_ms: int | None = None
    recorded: bool = False

    @property
    def response_id(self) -> str:
        return f"chatcmpl-{self.request_id.hex}"

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def headers(self) -> dict[str, str]:
        headers = {"x-request-id": str(self.request_id)}
        if self.deployment is not None:
            headers["x-gateway-provider"] = self.deployment.target.provider_name
            headers["x-gateway-model"] = self.deployment.target.upstream_model
        if self.log.attempts:
            headers["x-gateway-attempts"] = str(self.log.attempts)
        if self.plan is not None and self.plan.rule:
            headers["x-gateway-route"] = self.plan.rule
        return headers

    def served_by(self, deployment: Deployment) -> None:
        self.deployment = deployment


# --- entry points ------------------------------------------------------------------------------
async def chat(call: Call, *, headers, raw_body: bytes, max_body_bytes: int) -> dict | AsyncIterator[dict]:
    """Serve a chat completion: the finished body, or an iterator of chunks for a stream.

    A stream is returned only once its first chunk has arrived, so that a provider failing before
    the first token fails over (or becomes a plain HTTP error) without the client seeing a byte.
    """
    call.auth = await api_key_authenticate(raw_key=bearer_token(headers))
    try:
        body = validation.json_body(raw_body, max_bytes=max_body_bytes)
        call.stream = body.get("stream") is True
        call.payload = validation.chat_request_validate(body)
        call.requested_model = body["model"]
        call.plan = await _route(call, body=body, headers=headers, mode="chat")
        if call.stream:
            return await _stream_open(call)
        result = await _attempt(call, lambda adapter, d: adapter.chat(call.payload, d.target))
    except GatewayError as exc:
        await _record_failure(call, exc)
        raise
    result.body["id"] = call.response_id
    call.usage = result.usage
    completion_text = "".join(_choice_texts(result.body))
    await _record(call, status="success", completion_text=completion_text)
    return result.body


async def embeddings(call: Call, *, headers, raw_body: bytes, max_body_bytes: int) -> dict:
    call.auth = await api_key_authenticate(raw_key=bearer_token(headers))
    try:
        body = validation.json_body(raw_body, max_bytes=max_body_bytes)
        call.payload = validation.embeddings_request_validate(body)
        call.requested_model = body["model"]
        call.plan = await _route(call, body=body, headers=headers, mode="embedding")
        result = await _attempt(call, lambda adapter, d: adapter.embeddings(call.payload, d.target))
    except GatewayError as exc:
        await _record_failure(call, exc)
        raise
    call.usage = result.usage
    await _record(call, status="success")
    return result.body


# --- route and attempts ------------------------------------------------------------------------
async def _route(call: Call, *, body: dict, headers, mode: str) -> RoutePlan:
    def estimate() -> tuple[int, int]:
        completion = call.payload.get("max_completion_tokens") or call.payload.get("max_tokens") or 256
        return _estimate(call, "")[0], completion

    return await route_select(
        auth=call.auth,
        model=body["model"],
        mode=mode,
        hints=route_hints(body=body, headers=headers),
        estimate=estimate,
    )


async def _attempt(call: Call, send):
    return await attempts_run(
        call.plan, send, log=call.log, on_deployment=call.served_by, stream=call.stream
    )


# --- streaming ----------------------------------------------------------------------------------
async def _stream_open(call: Call) -> AsyncIterator[dict]:
    async def first_chunk(adapter: Adapter, deployment: Deployment):
        stream = adapter.chat_stream(call.payload, deployment.target)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise adapter.malformed(deployment.target, "stream (no events)") from None
        except BaseException:
            await stream.aclose()
            raise
        return stream, first

    stream, first = await _attempt(call, first_chunk)
    return _stream_relay(call, stream, first)


async def _stream_relay(call: Call, stream: AsyncIterator[dict], first: dict) -> AsyncIterator[dict]:
    """Relay upstream chunks to the client and record the outcome however the stream ends."""
    wants_usage = bool((call.payload.get("stream_options") or {}).get("include_usage"))
    texts: list[str] = []
    status, http_status, error_class = "success", 200, ""
    try:
        async for chunk in _prepend(first, stream):
            relayed = _chunk_relay(call, chunk, texts, wants_usage=wants_usage)
            if relayed is not None:
                yield relayed
        if wants_usage and call.usage is None:
            yield _usage_chunk(call, texts)
    except ProviderError as exc:
        status, http_status, error_class = "error", exc.status, exc.error_class
        await stream_failure_note(call.plan, call.deployment, exc)
        yield exc.as_body()
    except (asyncio.CancelledError, GeneratorExit):
        status, error_class = "cancelled", "client_disconnected"
        raise
    except Exception:
        status, http_status, error_class = "error", 500, "internal"
        raise
    finally:
        await stream.aclose()
        await _record(
            call,
            status=status,
            completion_text="".join(texts),
            http_status=http_status,
            error_class=error_class,
        )


async def _prepend(first: dict, stream: AsyncIterator[dict]) -> AsyncIterator[dict]:
    yield first
    async for chunk in stream:
        yield chunk


def _chunk_relay(call: Call, chunk: dict, texts: list[str], *, wants_usage: bool) -> dict | None:
    usage = Usage.from_openai(chunk.get("usage"))
    if usage is not None:
        call.usage = usage
    piece = "".join(_choice_texts(chunk))
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


def _usage_chunk(call: Call, texts: list[str]) -> dict:
    """A final usage chunk for a client that asked for one when the provider sent none."""
    prompt, completion = _estimate(call, "".join(texts))
    return {
        "id": call.response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": call.deployment.target.upstream_model if call.deployment else call.requested_model,
        "choices": [],
        "usage": Usage(prompt_tokens=prompt, completion_tokens=completion).as_openai(),
    }


def _choice_texts(body: dict) -> list[str]:
    texts = []
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        part = choice.get("delta") or choice.get("message") or {}
        content = part.get("content") if isinstance(part, dict) else None
        if isinstance(content, str):
            texts.append(content)
    return texts


# --- record -------------------------------------------------------------------------------------
def _estimate(call: Call, completion_text: str) -> tuple[int, int]:
    if call.endpoint == "embeddings":
        return tokens.embedding_input_tokens(call.payload.get("input")), 0
    return tokens.prompt_tokens(call.payload.get("messages") or []), tokens.text_tokens(completion_text)


async def _record_failure(call: Call, exc: GatewayError) -> None:
    await _record(call, status="error", http_status=exc.status, error_class=exc.error_class)


async def _record(
    call: Call,
    *,
    status: str,
    completion_text: str = "",
    http_status: int = 200,
    error_class: str = "",
) -> None:
    """Write the request's one UsageRecord; a client that goes away cannot cancel the write."""
    if call.recorded or call.auth is None:
        return
    call.recorded = True
    fields = _record_fields(call, status=status, completion_text=completion_text)
    fields.update(http_status=http_status, error_class=error_class)
    logger.info(
        "request %s tenant=%s endpoint=%s model=%s provider=%s status=%s http=%s error=%s "
        "tokens=%s+%s latency_ms=%s attempts=%s",
        call.request_id, call.auth.tenant_slug, call.endpoint, call.requested_model,
        fields["provider_name"] or "-", status, http_status, error_class or "-",
        fields["prompt_tokens"], fields["completion_tokens"], fields["latency_ms"], call.log.attempts,
    )
    task = asyncio.ensure_future(usage_record_create(**fields))
    _background.add(task)
    task.add_done_callback(_record_done)
    try:
        await asyncio.shield(task)
    except Exception:  # logged by _record_done; the client still gets its answer
        pass


def _record_fields(call: Call, *, status: str, completion_text: str) -> dict:
    # Tokens are billed when a provider answered, even in part (a stream cut after its first
    # token); a request that never reached one costs nothing.
    answered = status != "error" or call.usage is not None or bool(completion_text)
    served = call.deployment if answered else None
    estimated = call.usage is None and served is not None
    if call.usage is not None:
        prompt, completion = call.usage.prompt_tokens, call.usage.completion_tokens
    elif served is not None:
        prompt, completion = _estimate(call, completion_text)
    else:
        prompt = completion = 0
    cost = 0
    if served is not None:
        cost = cost_compute(
            prompt_tokens=prompt,
            completion_tokens=completion,
            input_price_per_million=served.input_price_per_million,
            output_price_per_million=served.output_price_per_million,
        )
    deployment = call.deployment
    return {
        "request_id": call.request_id,
        "response_id": call.response_id if call.endpoint == "chat.completions" else "",
        "tenant_id": call.auth.tenant_id,
        "api_key_id": call.auth.key_id,
        "endpoint": call.endpoint,
        "requested_model": call.requested_model,
        "provider_id": deployment.target.provider_id if deployment else None,
        "provider_name": deployment.target.provider_name if deployment else "",
        "served_model": deployment.target.upstream_model if deployment else "",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "usage_estimated": estimated,
        "cost_usd": cost,
        "latency_ms": call.elapsed_ms(),
        "ttft_ms": call.ttft_ms,
        "stream": call.stream,
        "status": status,
        "attempts": call.log.entries,
        "end_user": str(call.payload.get("user") or "")[:256],
    }


def _record_done(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("usage record write failed", exc_info=task.exception())
