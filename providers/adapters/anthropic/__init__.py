"""Anthropic's Messages API, behind the gateway's OpenAI chat format.

Requests are translated from OpenAI chat completions to Messages, and responses and streamed
events back to `chat.completion` and `chat.completion.chunk` bodies. `target.api_base` is what
Anthropic's SDK takes as its base URL (`https://api.anthropic.com`), without `/v1`.

- `messages`: the turns, content parts and sampling parameters of a request;
- `tools`: tools, tool choice, tool calls and results both ways, and structured output
  (`response_format`), which is enforced by forcing a tool;
- `responses`: answers and stream events back to OpenAI's shapes.

Thinking and documents are not translated yet: a request that needs them is refused with a 400
rather than answered without them. Anthropic has no embeddings API, so the base refusal stays.

References: https://docs.anthropic.com/en/api/messages (request and response),
https://docs.anthropic.com/en/docs/build-with-claude/streaming (events),
https://docs.anthropic.com/en/api/errors (error types).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable

from kernel.errors import ProviderError
from providers.adapters.anthropic.messages import (
    DEFAULT_MAX_TOKENS,
    max_tokens_for,
    messages_split,
    sampling,
    unsupported_refuse,
)
from providers.adapters.anthropic.responses import (
    StreamState,
    finish_reason,
    message_build,
    usage_from,
)
from providers.adapters.anthropic.tools import (
    json_content_body,
    json_content_chunk,
    json_output_requested,
    tools_body,
)
from providers.adapters.base import (
    Adapter,
    ChatResult,
    SSEEvent,
    Target,
    UpstreamRequest,
)

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicAdapter"]

ANTHROPIC_VERSION = "2023-06-01"

_ERROR_CLASSES = {
    "rate_limit_error": "rate_limited",
    "overloaded_error": "overloaded",
    "api_error": "upstream_server",
    "authentication_error": "auth",
    "permission_error": "auth",
    "request_too_large": "bad_request",
    "not_found_error": "bad_request",
    "invalid_request_error": "bad_request",
}

# Anthropic reports an overlong prompt as a plain invalid_request_error; only the wording tells,
# e.g. "prompt is too long: 207791 tokens > 200000 maximum" or "input length and `max_tokens`
# exceed context limit: 178959 + 64000 > 200000".
_CONTEXT_LENGTH = re.compile(r"prompt is too long|exceeds? (the )?context (limit|window)", re.I)
# Likewise a blocked output: "Output blocked by content filtering policy", sent as a 400 or as a
# mid-stream error event (https://github.com/anthropics/claude-code/issues/6195).
_CONTENT_FILTER = re.compile(r"content filtering policy", re.I)


# What Anthropic's token counter takes of a message request (https://docs.anthropic.com/en/api/messages-count-tokens).
COUNTED_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")


class AnthropicAdapter(Adapter):
    wire_type = "anthropic"

    def _headers(self, target: Target) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
        if target.api_key:
            headers["x-api-key"] = target.api_key
        return headers

    def chat_request(self, payload: dict, target: Target) -> UpstreamRequest:
        unsupported_refuse(payload)
        system, messages = messages_split(payload.get("messages"))
        body: dict = {
            "model": target.upstream_model,
            "messages": messages,
            "max_tokens": max_tokens_for(payload, default=target.max_output_tokens),
        }
        if system:
            body["system"] = system
        body.update(sampling(payload))
        body.update(tools_body(payload))
        if payload.get("user"):
            body["metadata"] = {"user_id": str(payload["user"])}
        if "stream" in payload:
            body["stream"] = bool(payload["stream"])
        return UpstreamRequest(
            url=f"{target.api_base.rstrip('/')}/v1/messages",
            json=body,
            headers=self._headers(target),
        )

    async def count_tokens(self, payload: dict, target: Target) -> int:
        """`POST /v1/messages/count_tokens` with the message request's counted fields."""
        request = self.chat_request(self.params_filter(payload, target), target)
        body = {key: value for key, value in request.json.items() if key in COUNTED_FIELDS}
        counting = UpstreamRequest(url=f"{request.url}/count_tokens", json=body, headers=request.headers)
        return self.token_count((await self._send_json(counting, target)).get("input_tokens"), target)

    # Structured output comes back as the forced tool's call; only the request says so, and
    # `chat_response` / `chat_stream_chunks` never see it, so these two turn the call into content.
    async def chat(self, payload: dict, target: Target) -> ChatResult:
        result = await super().chat(payload, target)
        if json_output_requested(self.params_filter(payload, target)):
            json_content_body(result.body)
        return result

    async def chat_stream(
        self, payload: dict, target: Target, *, opened: Callable[[], None] | None = None
    ) -> AsyncIterator[dict]:
        as_json = json_output_requested(self.params_filter(payload, target))
        chunks = super().chat_stream(payload, target, opened=opened)
        try:
            async for chunk in chunks:
                if as_json and (chunk := json_content_chunk(chunk)) is None:
                    continue
                yield chunk
        finally:
            await chunks.aclose()

    def chat_response(self, data: dict, target: Target) -> ChatResult:
        content = data.get("content")
        if not isinstance(content, list):
            raise self.malformed(target, "a message (no content)")
        usage = usage_from(data.get("usage"))
        body = {
            "id": data.get("id", ""),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("model") or target.upstream_model,
            "choices": [
                {
                    "index": 0,
                    "message": message_build(content),
                    "finish_reason": finish_reason(data.get("stop_reason")),
                    "logprobs": None,
                }
            ],
        }
        if usage:
            body["usage"] = usage.as_openai()
        return ChatResult(body=body, usage=usage)

    async def chat_stream_chunks(
        self, events: AsyncIterator[SSEEvent], target: Target
    ) -> AsyncIterator[dict]:
        stream = StreamState(model=target.upstream_model)
        async for event in events:
            data = self.load_event(event, target)
            kind = data.get("type") or event.event
            if kind == "message_start":
                yield stream.start(data.get("message"))
            elif kind == "content_block_start":
                if chunk := stream.tool_start(data):
                    yield chunk
            elif kind == "content_block_delta":
                if chunk := self._delta_chunk(stream, data, target):
                    yield chunk
            elif kind == "message_delta":
                yield stream.finish(data)
            elif kind == "message_stop":
                if stream.usage():
                    yield stream.usage_chunk()
                return
            elif kind == "error":
                raise self._stream_error(data.get("error"), target)
            # `ping`, block stops, and event types Anthropic adds later are skipped, as its
            # versioning policy asks of clients.
        raise self.malformed(target, "stream (ended before message_stop)")

    def _delta_chunk(self, stream: StreamState, data: dict, target: Target) -> dict | None:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            return stream.chunk({"content": delta.get("text", "")})
        if delta.get("type") == "input_json_delta":
            try:
                return stream.tool_arguments(data)
            except KeyError:
                what = "stream (input_json_delta outside a tool_use block)"
                raise self.malformed(target, what) from None
        return None  # thinking and signature deltas are not translated yet

    def error_details(self, status: int, data: object) -> tuple[str | None, str]:
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            return None, str(data)[:300] if data else ""
        kind, message = str(error.get("type") or ""), str(error.get("message") or "")
        if kind == "invalid_request_error":
            if _CONTEXT_LENGTH.search(message):
                return "context_length_exceeded", message
            if _CONTENT_FILTER.search(message):
                return "content_filtered", message
        return _ERROR_CLASSES.get(kind), message

    def _stream_error(self, error: object, target: Target) -> ProviderError:
        # After the 200, Anthropic reports failures as an `error` event with the same body shape.
        error_class, message = self.error_details(200, {"type": "error", "error": error})
        return ProviderError(
            f"Provider '{target.provider_name}' failed mid-stream: {message or 'error event'}",
            error_class=error_class or "upstream_server",
            provider=target.provider_name,
            secret=target.api_key,
        )
