"""Anthropic's Messages format at the gateway's front door, translated to and from OpenAI's.

The inbound `/v1/messages` endpoint lets the official `anthropic` SDK (and tools built on it) use
any model behind the gateway: its requests become the gateway's OpenAI-format payloads, and the
answers (plain or streamed) go back as Anthropic messages and events.
Reference: https://docs.anthropic.com/en/api/messages and .../messages-streaming
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from kernel.errors import GatewayError, InvalidRequest

REQUEST_KEYS = {
    "model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p", "top_k",
    "stream", "metadata", "tools", "tool_choice", "service_tier", "thinking",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
    429: "rate_limit_error", 503: "overloaded_error",
}


def anthropic_error(exc: GatewayError) -> dict:
    kind = ERROR_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


# --- request: Anthropic -> OpenAI --------------------------------------------------------------
def openai_payload(body: dict) -> dict:
    """The gateway's OpenAI-format body for an Anthropic Messages request."""
    unknown = sorted(set(body) - REQUEST_KEYS)
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: Extra inputs are not permitted", param=unknown[0])
    for required in ("model", "messages", "max_tokens"):
        if required not in body:
            raise InvalidRequest(f"{required}: Field required", param=required)
    payload: dict = {
        "model": body["model"],
        "max_tokens": body["max_tokens"],
        "messages": _system(body.get("system")) + _messages(body["messages"]),
        "stream": bool(body.get("stream")),
    }
    for source, target in (("temperature", "temperature"), ("top_p", "top_p"), ("stop_sequences", "stop")):
        if body.get(source) is not None:
            payload[target] = body[source]
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if user:
        payload["user"] = str(user)
    if body.get("tools"):
        payload["tools"] = [_tool(tool, i) for i, tool in enumerate(_list(body["tools"], "tools"))]
    if body.get("tool_choice"):
        payload["tool_choice"] = _tool_choice(body["tool_choice"])
    return payload


def _list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise InvalidRequest(f"{where}: Input should be a valid list", param=where)
    return value


def _system(system: object) -> list[dict]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    blocks = _list(system, "system")
    text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
    return [{"role": "system", "content": text}]


def _messages(messages: object) -> list[dict]:
    result: list[dict] = []
    for index, message in enumerate(_list(messages, "messages")):
        where = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"{where}.role: Input should be 'user' or 'assistant'", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            result.append({"role": message["role"], "content": content})
        else:
            result.extend(_blocks(message["role"], _list(content, f"{where}.content"), where))
    return result


def _blocks(role: str, blocks: list, where: str) -> list[dict]:
    """Content blocks become OpenAI parts, assistant tool calls, or tool messages."""
    parts, tool_calls, tool_messages = [], [], []
    for index, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, f"{where}.content.{index}")}})
        elif kind == "tool_use" and role == "assistant":
            tool_calls.append({
                "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})},
            })
        elif kind == "tool_result" and role == "user":
            tool_messages.append({
                "role": "tool", "tool_call_id": block.get("tool_use_id"), "content": _result_text(block.get("content")),
            })
        else:
            raise InvalidRequest(f"{where}.content.{index}: unsupported block type '{kind}'", param=f"{where}.content")
    message: list[dict] = list(tool_messages)
    if parts or tool_calls:
        entry: dict = {"role": role, "content": parts or None}
        if tool_calls:
            entry["tool_calls"] = tool_calls
        message.append(entry)
    return message


def _image_url(block: dict, where: str) -> str:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return source["url"]
    raise InvalidRequest(f"{where}.source: expected a base64 or url image source", param=where)


def _result_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _tool(tool: object, index: int) -> dict:
    if not isinstance(tool, dict) or not tool.get("name"):
        raise InvalidRequest(f"tools.{index}.name: Field required", param=f"tools.{index}")
    return {"type": "function", "function": {
        "name": tool["name"], "description": tool.get("description", ""),
        "parameters": tool.get("input_schema") or {"type": "object"},
    }}


def _tool_choice(choice: object) -> object:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    mapping = {"auto": "auto", "any": "required", "none": "none"}
    if kind not in mapping:
        raise InvalidRequest("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", param="tool_choice")
    return mapping[kind]


# --- response: OpenAI -> Anthropic --------------------------------------------------------------
def anthropic_message(completion: dict, *, message_id: str, model: str) -> dict:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        content.append(_tool_use(call))
    usage = completion.get("usage") or {}
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
        "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)},
    }


def _tool_use(call: dict) -> dict:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = {}
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}


async def anthropic_events(
    chunks: AsyncIterator[dict], *, message_id: str, model: str, input_tokens: int
) -> AsyncIterator[tuple[str, dict]]:
    """OpenAI chunks as Anthropic's event sequence: message_start, ping, content blocks, deltas,
    message_delta with the stop reason and usage, message_stop (or an error event)."""
    yield "message_start", {"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 0},
    }}
    yield "ping", {"type": "ping"}
    blocks = _BlockWriter()
    stop, usage = "end_turn", {"input_tokens": input_tokens, "output_tokens": 0}
    async for chunk in chunks:
        if "error" in chunk:
            for event in blocks.close():
                yield event
            yield "error", {"type": "error", "error": {"type": "api_error", "message": chunk["error"].get("message", "")}}
            return
        if chunk.get("usage"):
            usage = {"input_tokens": chunk["usage"].get("prompt_tokens", 0),
                     "output_tokens": chunk["usage"].get("completion_tokens", 0)}
        for choice in chunk.get("choices") or ():
            for event in blocks.feed(choice.get("delta") or {}):
                yield event
            if choice.get("finish_reason"):
                stop = STOP_REASONS.get(choice["finish_reason"], "end_turn")
    for event in blocks.close():
        yield event
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage}
    yield "message_stop", {"type": "message_stop"}


class _BlockWriter:
    """Turns OpenAI deltas into Anthropic content blocks (text, then tool_use blocks)."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None
        self.tool_slots: dict[int, int] = {}

    def _start(self, kind: str, block: dict) -> list[tuple[str, dict]]:
        events = self.close()
        self.index += 1
        self.kind = kind
        return events + [("content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block})]

    def close(self) -> list[tuple[str, dict]]:
        if self.kind is None:
            return []
        self.kind = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def feed(self, delta: dict) -> list[tuple[str, dict]]:
        events: list[tuple[str, dict]] = []
        if delta.get("content"):
            if self.kind != "text":
                events += self._start("text", {"type": "text", "text": ""})
            events.append(("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                   "delta": {"type": "text_delta", "text": delta["content"]}}))
        for call in delta.get("tool_calls") or ():
            slot = call.get("index", 0)
            if slot not in self.tool_slots:
                function = call.get("function") or {}
                events += self._start("tool_use", {"type": "tool_use", "id": call.get("id"),
                                                   "name": function.get("name"), "input": {}})
                self.tool_slots[slot] = self.index
            arguments = (call.get("function") or {}).get("arguments")
            if arguments:
                events.append(("content_block_delta", {"type": "content_block_delta", "index": self.tool_slots[slot],
                                                       "delta": {"type": "input_json_delta", "partial_json": arguments}}))
        return events
