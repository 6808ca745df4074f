"""Response translation: a Messages answer, or its stream events, as OpenAI chat completions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from providers.adapters.anthropic.tools import tool_call
from providers.adapters.base import USAGE_SO_FAR, Usage, usage_so_far

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
_INPUT_TOKEN_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def message_build(content: list) -> dict:
    """The OpenAI message of a Messages answer: its text, and its tool_use blocks as tool calls.

    Thinking blocks are not translated yet. As in OpenAI's answers, `content` is null when the
    model only called tools.
    """
    blocks = [block for block in content if isinstance(block, dict)]
    text = "".join(str(block.get("text", "")) for block in blocks if block.get("type") == "text")
    calls = [tool_call(block) for block in blocks if block.get("type") == "tool_use"]
    message = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return message


def finish_reason(stop_reason: object) -> str | None:
    if stop_reason is None:
        return None
    return _STOP_REASONS.get(str(stop_reason), "stop")


def usage_from(data: object) -> Usage | None:
    """Prompt tokens include cache writes and reads, which Anthropic counts apart from input."""
    if not isinstance(data, dict):
        return None
    return Usage(
        prompt_tokens=sum(int(data.get(name) or 0) for name in _INPUT_TOKEN_FIELDS),
        completion_tokens=int(data.get("output_tokens") or 0),
        cached_tokens=int(data.get("cache_read_input_tokens") or 0),
    )


@dataclass
class StreamState:
    """What a stream has told so far: message_start names the message, message_delta ends it,
    and each tool_use block start gives the next OpenAI tool call index.

    message_start reports the input (and cache) tokens, which its chunk passes on as
    `usage_so_far`; its `output_tokens` is a placeholder, so the completion side waits for
    message_delta, whose counts are cumulative.
    """

    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    raw_usage: dict = field(default_factory=dict)
    output_reported: bool = False  # a message_delta gave output_tokens
    # Anthropic content block index -> OpenAI tool call index (its place among the tool calls).
    tool_indexes: dict[object, int] = field(default_factory=dict)

    def start(self, message: object) -> dict:
        message = message if isinstance(message, dict) else {}
        self.id = str(message.get("id") or "")
        self.model = str(message.get("model") or self.model)
        self._add_usage(message.get("usage"))
        return self._with_usage_so_far(self.chunk({"role": "assistant", "content": ""}))

    def tool_start(self, data: dict) -> dict | None:
        """A content_block_start: a tool call's first chunk (id and name) for a tool_use block."""
        block = data.get("content_block")
        if not isinstance(block, dict) or block.get("type") != "tool_use":
            return None
        index = self.tool_indexes[data.get("index")] = len(self.tool_indexes)
        call = {
            "index": index,
            "id": str(block.get("id") or ""),
            "type": "function",
            "function": {"name": str(block.get("name") or ""), "arguments": ""},
        }
        return self.chunk({"tool_calls": [call]})

    def tool_arguments(self, data: dict) -> dict | None:
        """An input_json_delta: the next piece of a tool call's arguments.

        Raises KeyError when no tool_use block started at that index.
        """
        index = self.tool_indexes[data.get("index")]
        piece = (data.get("delta") or {}).get("partial_json") or ""
        if not piece:
            return None
        return self.chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})

    def finish(self, data: dict) -> dict:
        # message_delta counts are cumulative, so they replace what message_start said.
        usage = data.get("usage")
        self._add_usage(usage)
        self.output_reported = self.output_reported or (
            isinstance(usage, dict) and usage.get("output_tokens") is not None
        )
        reason = (data.get("delta") or {}).get("stop_reason")
        return self._with_usage_so_far(self.chunk({}, finish_reason=finish_reason(reason)))

    def chunk(self, delta: dict, *, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**self._envelope(), "choices": [choice]}

    def usage(self) -> Usage | None:
        return usage_from(self.raw_usage) if self.raw_usage else None

    def usage_chunk(self) -> dict:
        return {**self._envelope(), "choices": [], "usage": self.usage().as_openai()}

    def _with_usage_so_far(self, chunk: dict) -> dict:
        """The chunk, with the counts reported so far when there are any."""
        usage = self.usage()
        if usage is None:
            return chunk
        prompt_reported = any(name in self.raw_usage for name in _INPUT_TOKEN_FIELDS)
        partial = usage_so_far(
            prompt_tokens=usage.prompt_tokens if prompt_reported else None,
            completion_tokens=usage.completion_tokens if self.output_reported else None,
            cached_tokens=usage.cached_tokens,
        )
        if partial:
            chunk[USAGE_SO_FAR] = partial
        return chunk

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
