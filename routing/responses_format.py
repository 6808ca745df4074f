"""OpenAI's Responses API format at the gateway's front door, translated to and from chat.

`POST /v1/responses` lets the official `openai` SDK's `client.responses` (and the agent frameworks
built on it) use any model behind the gateway: a Responses request becomes the gateway's chat
request, whose answer (plain or streamed) goes back as a Response object and its typed events.
Reference: https://platform.openai.com/docs/api-reference/responses and .../responses-streaming;
the shapes are the `openai` SDK's `openai.types.responses`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from kernel.errors import InvalidRequest

# What the gateway reads of a Responses request; anything else is refused with a 400 naming it.
REQUEST_KEYS = {
    "model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens", "temperature",
    "top_p", "metadata", "user", "store", "previous_response_id", "stream", "parallel_tool_calls",
    "reasoning", "include", "truncation", "service_tier", "safety_identifier", "prompt_cache_key",
    "stream_options", "routing", "cache",
}
# Parameters of OpenAI's hosted features that a translation to chat cannot honour.
REFUSED_KEYS = {"background", "conversation", "prompt", "max_tool_calls", "top_logprobs"}
CHAT_PASSED = ("temperature", "top_p", "user", "parallel_tool_calls", "service_tier", "safety_identifier",
               "prompt_cache_key", "metadata", "routing", "cache")
INPUT_ROLES = {"user", "system", "developer", "assistant"}
TEXT_PARTS = {"input_text", "output_text"}
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- request: Responses -> chat -------------------------------------------------------------------
def request_check(body: dict) -> None:
    """Refuse what the translation cannot serve, before anything is looked up."""
    for key in sorted(body):
        if key in REFUSED_KEYS:
            raise InvalidRequest(f"'{key}' is not supported by the gateway's Responses API.", param=key,
                                 code="unsupported_parameter")
        if key not in REQUEST_KEYS:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key,
                                 code="unknown_parameter")
    if "model" not in body:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if "input" not in body:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    for name in ("previous_response_id", "instructions"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"'{name}' must be a string.", param=name)
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    if body.get("store") is not None and not isinstance(body["store"], bool):
        raise InvalidRequest("'store' must be a boolean.", param="store")
    tokens = body.get("max_output_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise InvalidRequest("'max_output_tokens' must be a positive integer.", param="max_output_tokens")


def input_items(value: object) -> list[dict]:
    """The request's `input` as a list of items, each with its `type` and an `id`."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'input' must be a string or a non-empty array of input items.", param="input")
    return [_item(item, f"input[{index}]") for index, item in enumerate(value)]


def _item(item: object, where: str) -> dict:
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    if item.get("id") is not None and not isinstance(item["id"], str):
        raise InvalidRequest(f"'{where}.id' must be a string.", param=f"{where}.id")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in INPUT_ROLES:
            raise InvalidRequest(f"'{where}.role' must be one of {', '.join(sorted(INPUT_ROLES))}.", param=f"{where}.role")
        content = _content(item.get("content"), role=role, where=f"{where}.content")
        return {"id": item.get("id") or item_id("msg"), "type": "message", "role": role, "content": content,
                "status": "completed"}
    if kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise InvalidRequest(f"'{where}.{name}' must be a string.", param=f"{where}.{name}")
        return {"id": item.get("id") or item_id("fc"), "type": "function_call", "call_id": item["call_id"],
                "name": item["name"], "arguments": item["arguments"], "status": "completed"}
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise InvalidRequest(f"'{where}.call_id' must be a string.", param=f"{where}.call_id")
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(_part_text(part, f"{where}.output") for part in output)
        if not isinstance(output, str):
            raise InvalidRequest(f"'{where}.output' must be a string or text parts.", param=f"{where}.output")
        return {"id": item.get("id") or item_id("fco"), "type": "function_call_output", "call_id": item["call_id"],
                "output": output, "status": "completed"}
    if kind == "reasoning":
        return {"id": item.get("id") or item_id("rs"), "type": "reasoning", "summary": item.get("summary") or []}
    raise InvalidRequest(f"'{where}.type' '{kind}' is not supported by the gateway's Responses API; use message, "
                         "function_call or function_call_output.", param=f"{where}.type", code="unsupported_value")


def _content(content: object, *, role: str, where: str) -> list[dict]:
    """A message's content as Responses parts: `input_text` (`output_text` for the assistant), `input_image`."""
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return [text_part(text_type, content)]
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or an array of content parts.", param=where)
    parts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS or kind == "refusal":
            parts.append(text_part(text_type, _part_text(part, f"{where}[{index}]")))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "input_image", "image_url": part["image_url"], "detail": part.get("detail") or "auto"})
        else:
            raise InvalidRequest(f"'{where}[{index}].type' '{kind}' is not supported; use input_text, output_text "
                                 "or input_image with an image_url.", param=f"{where}[{index}].type",
                                 code="unsupported_value")
    return parts


def text_part(kind: str, text: str) -> dict:
    return {"type": kind, "text": text, "annotations": []} if kind == "output_text" else {"type": kind, "text": text}


def _part_text(part: object, where: str) -> str:
    if isinstance(part, dict):
        text = part.get("refusal") if part.get("type") == "refusal" else part.get("text")
        if isinstance(text, str):
            return text
    raise InvalidRequest(f"'{where}' must be a text part with a string 'text'.", param=where)


def chat_payload(body: dict, *, items: list[dict]) -> dict:
    """The gateway's chat request for a checked Responses request whose conversation is `items`
    (the earlier responses' items, then its own input)."""
    messages = [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    messages += chat_messages(items)
    payload: dict = {"model": body["model"], "messages": messages}
    for name in CHAT_PASSED:
        if body.get(name) is not None:
            payload[name] = body[name]
    if body.get("max_output_tokens") is not None:
        payload["max_completion_tokens"] = body["max_output_tokens"]
    if isinstance(body.get("reasoning"), dict) and body["reasoning"].get("effort"):
        payload["reasoning_effort"] = body["reasoning"]["effort"]
    if body.get("tools"):
        payload["tools"] = [_tool(tool, index) for index, tool in enumerate(_list(body["tools"], "tools"))]
    if body.get("tool_choice") is not None:
        payload["tool_choice"] = _tool_choice(body["tool_choice"])
    payload.update(_text(body.get("text")))
    if body.get("stream") is True:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


def chat_messages(items: list[dict]) -> list[dict]:
    """Responses items as chat messages: consecutive function calls join one assistant message."""
    messages: list[dict] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append({"role": item["role"], "content": _chat_content(item["content"])})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
        # reasoning items: the provider's own, not sent back through chat
    return messages


def _chat_content(parts: list[dict]) -> str | list[dict]:
    if all(part["type"] != "input_image" for part in parts):
        return "".join(part["text"] for part in parts)
    return [{"type": "image_url", "image_url": {"url": part["image_url"], "detail": part["detail"]}}
            if part["type"] == "input_image" else {"type": "text", "text": part["text"]} for part in parts]


def _list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise InvalidRequest(f"'{where}' must be an array.", param=where)
    return value


def _tool(tool: object, index: int) -> dict:
    """A Responses function tool (flat: name, parameters, strict) as chat's nested one."""
    where = f"tools[{index}]"
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise InvalidRequest(f"'{where}.type' '{kind}' is not supported by the gateway's Responses API; only "
                             "function tools are.", param=f"{where}.type", code="unsupported_value")
    if not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"Missing required parameter: '{where}.name'.", param=f"{where}.name",
                             code="missing_required_parameter")
    function = {"name": tool["name"]}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice: object) -> object:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest("'tool_choice' must be auto, none, required or {\"type\": \"function\", \"name\": ...}.",
                         param="tool_choice", code="unsupported_value")


def _text(text: object) -> dict:
    """`text.format` as chat's `response_format` (json_schema enforced as for chat), `text.verbosity`."""
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise InvalidRequest("'text' must be an object.", param="text")
    payload: dict = {}
    if text.get("verbosity") is not None:
        payload["verbosity"] = text["verbosity"]
    spec = text.get("format")
    kind = spec.get("type") if isinstance(spec, dict) else None
    if spec is None or kind == "text":
        return payload
    if kind == "json_object":
        payload["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        if not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
            raise InvalidRequest("'text.format' of type json_schema needs a string 'name' and an object 'schema'.",
                                 param="text.format")
        schema = {name: spec[name] for name in ("name", "schema", "description", "strict") if spec.get(name) is not None}
        payload["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise InvalidRequest("'text.format.type' must be text, json_object or json_schema.", param="text.format.type",
                             code="unsupported_value")
    return payload


# --- response: chat -> Responses ------------------------------------------------------------------
@dataclass
class Echo:
    """What a Response object repeats of its request."""

    response_id: str
    model: str
    body: dict
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(self, *, status: str, output: list[dict], usage: dict | None, error: dict | None = None,
                 incomplete: str | None = None) -> dict:
        body = self.body
        text = body.get("text") if isinstance(body.get("text"), dict) else {}
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model, "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "service_tier": body.get("service_tier") or "default",
            "store": body.get("store", True) is not False, "temperature": body.get("temperature"),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
            "top_p": body.get("top_p"), "truncation": body.get("truncation") or "disabled",
            "usage": usage, "user": body.get("user"), "metadata": body.get("metadata") or {},
        }


def response_usage(usage: dict | None) -> dict | None:
    """Chat's usage in the Responses shape."""
    if not usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": usage.get("total_tokens") or prompt + completion}


def response_object(completion: dict, *, echo: Echo) -> dict:
    """A chat completion as a Response object."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output = []
    if message.get("content") or message.get("refusal") or not message.get("tool_calls"):
        output.append(_message_item(item_id("msg"), message.get("content") or "", refusal=message.get("refusal")))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(_call_item(item_id("fc"), call_id=call.get("id") or item_id("call"),
                                 name=function.get("name") or "", arguments=function.get("arguments") or ""))
    incomplete = INCOMPLETE.get(choice.get("finish_reason"))
    return echo.response(status="incomplete" if incomplete else "completed", output=output,
                         usage=response_usage(completion.get("usage")), incomplete=incomplete)


def _message_item(item: str, text: str, *, status: str = "completed", refusal: str | None = None) -> dict:
    content = [{"type": "refusal", "refusal": refusal}] if refusal else [text_part("output_text", text)]
    return {"id": item, "type": "message", "role": "assistant", "status": status, "content": content}


def _call_item(item: str, *, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"id": item, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def conversation_items(stored_context: list, stored_input: list, stored_response: dict) -> list[dict]:
    """The items a response continues from: what it continued, its input, its output."""
    return [*stored_context, *stored_input, *(stored_response.get("output") or [])]

