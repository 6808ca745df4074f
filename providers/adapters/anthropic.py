"""Anthropic's Messages API, behind the gateway's OpenAI chat format.

Requests are translated from OpenAI chat completions to Messages, and responses and streamed
events back to `chat.completion` and `chat.completion.chunk` bodies. `target.api_base` is what
Anthropic's SDK takes as its base URL (`https://api.anthropic.com`), without `/v1`.

Tools, thinking and documents are not translated yet: a request that needs them is refused with
a 400 rather than answered without them. Anthropic has no embeddings API, so the base refusal
stays.

References: https://docs.anthropic.com/en/api/messages (request and response),
https://docs.anthropic.com/en/docs/build-with-claude/streaming (events),
https://docs.anthropic.com/en/api/errors (error types).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gateway_site.errors import InvalidRequest, ProviderError
from providers.adapters.base import (
    Adapter,
    ChatResult,
    SSEEvent,
    Target,
    UpstreamRequest,
    Usage,
)

ANTHROPIC_VERSION = "2023-06-01"

# Anthropic requires `max_tokens` on every request; OpenAI does not. When the client sets no
# limit we send the model's configured output cap, or else this one, large enough for ordinary
# answers and accepted by every current model.
DEFAULT_MAX_TOKENS = 4096

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    # The model filled its context window before max_tokens: a length stop to the client.
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    # A server tool paused a long turn; OpenAI has no equivalent, and the text so far is whole.
    "pause_turn": "stop",
}

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

_TOOL_PARAMS = ("tools", "tool_choice", "functions", "function_call")
_LOGPROB_PARAMS = ("logprobs", "top_logprobs")
_INPUT_TOKEN_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")

# OpenAI parameters with no Messages counterpart that change nothing a client relies on, so they
# are dropped rather than refused: `seed`, `presence_penalty`, `frequency_penalty` and
# `logit_bias` only nudge sampling; `stream_options` is moot because Anthropic always reports
# usage; `parallel_tool_calls` has no meaning without tools; `service_tier` and `store` are
# OpenAI account features; OpenAI's `metadata` is free-form tags for its dashboard, while
# Anthropic's takes only `user_id` (filled from `user`). The request body is built from the
# parameters translated below, so anything else is dropped as well.


class AnthropicAdapter(Adapter):
    wire_type = "anthropic"

    def _headers(self, target: Target) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
        if target.api_key:
            headers["x-api-key"] = target.api_key
        return headers

    def chat_request(self, payload: dict, target: Target) -> UpstreamRequest:
        _refuse_unsupported(payload)
        system, messages = _split_messages(payload.get("messages"))
        body: dict = {
            "model": target.upstream_model,
            "messages": messages,
            "max_tokens": _max_tokens(payload, default=target.max_output_tokens),
        }
        if system:
            body["system"] = system
        body.update(_sampling(payload))
        if payload.get("user"):
            body["metadata"] = {"user_id": str(payload["user"])}
        if "stream" in payload:
            body["stream"] = bool(payload["stream"])
        return UpstreamRequest(
            url=f"{target.api_base.rstrip('/')}/v1/messages",
            json=body,
            headers=self._headers(target),
        )

    def chat_response(self, data: dict, target: Target) -> ChatResult:
        content = data.get("content")
        if not isinstance(content, list):
            raise self.malformed(target, "a message (no content)")
        usage = _usage(data.get("usage"))
        message = {"role": "assistant", "content": _text(content), "refusal": None}
        body = {
            "id": data.get("id", ""),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("model") or target.upstream_model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": _finish_reason(data.get("stop_reason")),
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
        stream = _Stream(model=target.upstream_model)
        async for event in events:
            data = self.load_event(event, target)
            kind = data.get("type") or event.event
            if kind == "message_start":
                yield stream.start(data.get("message"))
            elif kind == "content_block_delta":
                # Only text for now; input_json_delta (tools) and thinking deltas come later.
                delta = data.get("delta") or {}
                if delta.get("type") == "text_delta":
                    yield stream.chunk({"content": delta.get("text", "")})
            elif kind == "message_delta":
                yield stream.finish(data)
            elif kind == "message_stop":
                if stream.usage():
                    yield stream.usage_chunk()
                return
            elif kind == "error":
                raise self._stream_error(data.get("error"), target)
            # `ping`, block start/stop, and event types Anthropic adds later are skipped, as its
            # versioning policy asks of clients.
        raise self.malformed(target, "stream (ended before message_stop)")

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
        )


@dataclass
class _Stream:
    """What a stream has told so far: message_start names the message, message_delta ends it."""

    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    raw_usage: dict = field(default_factory=dict)

    def start(self, message: object) -> dict:
        message = message if isinstance(message, dict) else {}
        self.id = str(message.get("id") or "")
        self.model = str(message.get("model") or self.model)
        self._add_usage(message.get("usage"))
        return self.chunk({"role": "assistant", "content": ""})

    def finish(self, data: dict) -> dict:
        # message_delta counts are cumulative, so they replace what message_start said.
        self._add_usage(data.get("usage"))
        reason = (data.get("delta") or {}).get("stop_reason")
        return self.chunk({}, finish_reason=_finish_reason(reason))

    def chunk(self, delta: dict, *, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**self._envelope(), "choices": [choice]}

    def usage(self) -> Usage | None:
        return _usage(self.raw_usage) if self.raw_usage else None

    def usage_chunk(self) -> dict:
        return {**self._envelope(), "choices": [], "usage": self.usage().as_openai()}

    def _envelope(self) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def _add_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            self.raw_usage.update({k: v for k, v in usage.items() if v is not None})


# --- request translation --------------------------------------------------------------------


def _refuse_unsupported(payload: dict) -> None:
    """Refuse what Anthropic cannot honour, rather than answer a different question."""
    if payload.get("n") not in (None, 1):
        raise InvalidRequest("Anthropic providers return one choice; 'n' must be 1.", param="n")
    for name in _TOOL_PARAMS:
        if payload.get(name):
            raise InvalidRequest(
                f"'{name}' is not supported yet for Anthropic providers.", param=name
            )
    if payload.get("response_format") not in (None, {"type": "text"}):
        raise InvalidRequest(
            "'response_format' other than text is not supported for Anthropic providers.",
            param="response_format",
        )
    for name in _LOGPROB_PARAMS:
        if payload.get(name):
            raise InvalidRequest(
                f"Anthropic providers do not return log probabilities; remove '{name}'.",
                param=name,
            )


def _max_tokens(payload: dict, *, default: int | None) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        if payload.get(name) is not None:
            return payload[name]
    return default or DEFAULT_MAX_TOKENS


def _sampling(payload: dict) -> dict:
    # Anthropic's temperature range is 0-1 where OpenAI's is 0-2; a value above 1 is passed on
    # and refused by Anthropic, rather than silently rescaled.
    body = {
        name: payload[name] for name in ("temperature", "top_p") if payload.get(name) is not None
    }
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return body


def _split_messages(messages: object) -> tuple[str, list[dict]]:
    """Return (system prompt, turns): Messages takes the system prompt outside the turns."""
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list.", param="messages")
    system: list[str] = []
    turns: list[dict] = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            if text := _system_text(message.get("content")):
                system.append(text)
        elif role in ("user", "assistant"):
            _append_turn(turns, role=role, message=message)
        elif role in ("tool", "function"):
            raise InvalidRequest(
                f"Messages with role '{role}' are not supported yet for Anthropic providers.",
                param="messages",
            )
        else:
            raise InvalidRequest(f"Unsupported message role {role!r}.", param="messages")
    return "\n\n".join(system), turns


def _append_turn(turns: list[dict], *, role: str, message: dict) -> None:
    # Messages wants user and assistant to alternate, so consecutive turns of one role merge.
    if message.get("tool_calls") or message.get("function_call"):
        raise InvalidRequest(
            "Assistant tool calls are not supported yet for Anthropic providers.",
            param="messages",
        )
    content = _content(message.get("content"))
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"] = _blocks(turns[-1]["content"]) + _blocks(content)
    else:
        turns.append({"role": role, "content": content})


def _blocks(content: str | list[dict]) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _content(content: object) -> str | list[dict]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [_block(part) for part in content]
    raise InvalidRequest("Message content must be a string or a list of parts.", param="messages")


def _block(part: object) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return {"type": "text", "text": part.get("text", "")}
    if kind == "image_url":
        return _image_block(part.get("image_url"))
    raise InvalidRequest(
        f"Content parts of type {kind!r} are not supported for Anthropic providers.",
        param="messages",
    )


def _image_block(image_url: object) -> dict:
    """OpenAI image parts carry a URL or a data URL; Anthropic wants url or base64 sources."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url[len("data:"):].partition(",")
        media_type, *params = header.split(";")
        if comma and media_type and "base64" in params:
            source = {"type": "base64", "media_type": media_type, "data": data}
            return {"type": "image", "source": source}
        raise InvalidRequest(
            "Image data URLs must look like data:<media type>;base64,<data>.", param="messages"
        )
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("Image URLs must be http(s) or base64 data URLs.", param="messages")


def _system_text(content: object) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    raise InvalidRequest("System messages may only hold text.", param="messages")


# --- response translation -------------------------------------------------------------------


def _text(content: list) -> str:
    # Thinking and tool_use blocks are not translated yet; the text blocks are the answer.
    return "".join(
        str(block.get("text", ""))
        for block in content
        if isinstance(block, dict) and block.get("type") == "text"
    )


def _finish_reason(stop_reason: object) -> str | None:
    if stop_reason is None:
        return None
    return _STOP_REASONS.get(str(stop_reason), "stop")


def _usage(data: object) -> Usage | None:
    """Prompt tokens include cache writes and reads, which Anthropic counts apart from input."""
    if not isinstance(data, dict):
        return None
    return Usage(
        prompt_tokens=sum(int(data.get(name) or 0) for name in _INPUT_TOKEN_FIELDS),
        completion_tokens=int(data.get("output_tokens") or 0),
        cached_tokens=int(data.get("cache_read_input_tokens") or 0),
    )
