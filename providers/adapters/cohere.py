"""Cohere's Chat API v2 and Embed API v2, behind the gateway's OpenAI format.

`target.api_base` is Cohere's host (`https://api.cohere.com`), without `/v2`. Chat v2 takes
OpenAI-like messages (system, user, assistant with `tool_calls`, tool with `tool_call_id`) and
OpenAI-shaped function tools, so most of a request maps field by field; sampling parameters are
renamed (`top_p` -> `p`, `stop` -> `stop_sequences`). Answers and streamed events are rebuilt as
`chat.completion` and `chat.completion.chunk` bodies.

What cannot be honoured is refused with a 400 naming the parameter (a specific-function
`tool_choice`, `n` > 1, log probabilities, legacy `functions`, audio); what only nudges sampling
or is an OpenAI account feature (`logit_bias`, `user`, `service_tier`, `store`,
`stream_options`...) is dropped, since the body is built from the translated fields only.
Cohere's `tool_plan` (the model's note on which tools it will call) has no OpenAI counterpart
and is dropped too.

Usage is Cohere's `billed_units` (what Cohere charges for, https://docs.cohere.com/docs/how-does-cohere-pricing-work),
or `tokens` when no billed units are reported; `tokens` also counts Cohere's own prompt template.

References: https://docs.cohere.com/reference/chat, https://docs.cohere.com/docs/streaming,
https://docs.cohere.com/docs/tool-use-streaming, https://docs.cohere.com/reference/embed,
https://docs.cohere.com/reference/errors.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from dataclasses import dataclass, field

from kernel.errors import InvalidRequest, ProviderError
from providers.adapters.media import rerank_answer, rerank_results, searches
from providers.adapters.base import (
    Adapter,
    ChatResult,
    MediaResult,
    Units,
    SSEEvent,
    Target,
    UpstreamRequest,
    Usage,
)

# Embed v3+ models require an input type; OpenAI's embeddings have none. Documents are what a
# gateway client usually embeds (to store and search later).
DEFAULT_INPUT_TYPE = "search_document"
MAX_EMBED_TEXTS = 96  # per request, https://docs.cohere.com/reference/embed

_FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
# Finish reasons that mean the generation failed: raised, never passed on as an answer.
_FAILED = {"ERROR": "upstream_server", "TIMEOUT": "timeout"}

# Statuses whose meaning differs from the shared default: 402 (billing limit reached) and 498
# (invalid token) are the provider key's problem; 499 is Cohere cancelling the request, which
# another attempt may survive.
_STATUS_CLASSES = {402: "auth", 498: "auth", 499: "upstream_server"}
# Cohere reports an overlong prompt as a plain 400; only the wording tells, e.g. "too many
# tokens: total number of tokens in the prompt cannot exceed 4081 - received 4292" or "too many
# tokens: size limit exceeded by 11326 tokens" (not "too many tokens: max tokens must be ...").
_CONTEXT_LENGTH = re.compile(
    r"too many tokens: (total number of tokens in the prompt|size limit)|context (length|window)",
    re.IGNORECASE,
)

_SAMPLING = {
    "temperature": "temperature",
    "top_p": "p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
_TOOL_CHOICES = {"auto": None, "none": "NONE", "required": "REQUIRED"}
_REFUSED = {
    "functions": "Legacy 'functions' are not supported for Cohere providers; use 'tools'.",
    "function_call": "Legacy 'function_call' is not supported for Cohere providers; use 'tool_choice'.",
    "logprobs": "Cohere providers do not return OpenAI log probabilities; remove 'logprobs'.",
    "top_logprobs": "Cohere providers do not return OpenAI log probabilities; remove 'top_logprobs'.",
    "audio": "Cohere providers do not produce audio.",
    "web_search_options": "Cohere providers do not search the web.",
}


class CohereAdapter(Adapter):
    wire_type = "cohere"
    supports_embeddings = True

    def _headers(self, target: Target) -> dict[str, str]:
        return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}

    def _url(self, target: Target, path: str) -> str:
        return f"{target.api_base.rstrip('/')}/v2/{path}"

    # --- chat -----------------------------------------------------------------------------------
    def chat_request(self, payload: dict, target: Target) -> UpstreamRequest:
        _refuse_unsupported(payload)
        body: dict = {"model": target.upstream_model, "messages": _messages(payload.get("messages"))}
        body.update(_sampling(payload))
        body.update(_tools(payload))
        if (response_format := _response_format(payload.get("response_format"))) is not None:
            body["response_format"] = response_format
        if payload.get("stream"):
            body["stream"] = True
        return UpstreamRequest(
            url=self._url(target, "chat"), json=body, headers=self._headers(target)
        )

    def chat_response(self, data: dict, target: Target) -> ChatResult:
        message = data.get("message")
        if not isinstance(message, dict):
            raise self.malformed(target, "a chat response (no message)")
        self._raise_if_failed(data.get("finish_reason"), target)
        usage = _usage(data.get("usage"))
        body = {
            "id": str(data.get("id") or ""),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": target.upstream_model,
            "choices": [
                {
                    "index": 0,
                    "message": _answer(message),
                    "finish_reason": _finish_reason(data.get("finish_reason")),
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
            if event.data.strip() == "[DONE]":
                break
            data = self.load_event(event, target)
            kind = data.get("type") or event.event
            if kind == "message-end":
                delta = _dict(data.get("delta"))
                self._raise_if_failed(delta.get("finish_reason"), target, mid_stream=True)
                yield stream.chunk({}, finish_reason=_finish_reason(delta.get("finish_reason")))
                if usage := _usage(delta.get("usage")):
                    yield stream.usage_chunk(usage)
                return
            if (chunk := stream.translate(kind, data)) is not None:
                yield chunk
        raise self.malformed(target, "stream (ended before message-end)")

    # --- embeddings -----------------------------------------------------------------------------
    async def embeddings(self, payload: dict, target: Target) -> ChatResult:
        result = await super().embeddings(payload, target)
        if payload.get("encoding_format") == "base64":
            # Cohere has no base64 float encoding; encode as OpenAI does (little-endian float32).
            for item in result.body["data"]:
                vector = item["embedding"]
                item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return result

    def embeddings_request(self, payload: dict, target: Target) -> UpstreamRequest:
        texts = payload.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise InvalidRequest(
                "Cohere providers embed text; 'input' must be a string or an array of strings.",
                param="input",
            )
        if len(texts) > MAX_EMBED_TEXTS:
            raise InvalidRequest(
                f"Cohere providers embed at most {MAX_EMBED_TEXTS} inputs per request.", param="input"
            )
        body = {
            "model": target.upstream_model,
            "texts": texts,
            "input_type": DEFAULT_INPUT_TYPE,
            "embedding_types": ["float"],
        }
        if payload.get("dimensions") is not None:
            body["output_dimension"] = payload["dimensions"]
        return UpstreamRequest(url=self._url(target, "embed"), json=body, headers=self._headers(target))

    def embeddings_response(self, data: dict, target: Target) -> ChatResult:
        embeddings = data.get("embeddings")
        vectors = embeddings.get("float") if isinstance(embeddings, dict) else None
        if not isinstance(vectors, list):
            raise self.malformed(target, "an embed response (no float embeddings)")
        usage = _usage(data.get("meta"))
        body = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": vector}
                for index, vector in enumerate(vectors)
            ],
            "model": target.upstream_model,
        }
        if usage:
            usage.completion_tokens = 0
            body["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
        return ChatResult(body=body, usage=usage)

    # --- errors ---------------------------------------------------------------------------------
    async def rerank(self, payload: dict, target: Target) -> MediaResult:
        """Rerank v2 (https://docs.cohere.com/reference/rerank): billed in searches."""
        body = {key: payload[key] for key in ("query", "documents", "top_n", "max_tokens_per_doc")
                if payload.get(key) is not None}
        request = UpstreamRequest(url=self._url(target, "rerank"), json={**body, "model": target.upstream_model},
                                  headers=self._headers(target))
        data = await self._send_json(request, target)
        results = rerank_results(data, documents=len(payload["documents"]))
        if results is None:
            raise self.malformed(target, "a rerank answer (no results)")
        billed = _dict(_dict(data.get("meta")).get("billed_units")).get("search_units")
        found = billed if isinstance(billed, int) and billed >= 0 else searches(len(payload["documents"]))
        return MediaResult(
            body=rerank_answer(results, search_units=found, response_id=str(data.get("id") or "")),
            units=Units(kind="search", count=Decimal(found)),
        )

    def error_details(self, status: int, data: object) -> tuple[str | None, str]:
        # Cohere's error body is {"id": ..., "message": ...}.
        if isinstance(data, dict):
            message = str(data.get("message") or "")
        else:
            message = str(data)[:300] if data else ""
        if status in (400, 422) and _CONTEXT_LENGTH.search(message):
            return "context_length_exceeded", message
        return _STATUS_CLASSES.get(status), message

    def _raise_if_failed(self, finish_reason: object, target: Target, *, mid_stream: bool = False) -> None:
        error_class = _FAILED.get(str(finish_reason))
        if error_class is None:
            return
        what = "failed mid-stream" if mid_stream else "failed"
        raise ProviderError(
            f"Provider '{target.provider_name}' {what}: finish_reason {finish_reason}",
            error_class=error_class,
            provider=target.provider_name,
        )


@dataclass
class _Stream:
    """What a stream has told so far: the message id, and which tool call deltas belong to."""

    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    tool_index: int = -1

    def translate(self, kind: str, data: dict) -> dict | None:
        """One Cohere event as an OpenAI chunk, or None when it carries nothing for the client.

        Skipped: content-start/-end, tool-plan-delta, tool-call-end, citation-start/-end, debug,
        thinking deltas, and event types Cohere adds later.
        """
        message = _delta_message(data)
        if kind == "message-start":
            self.id = str(data.get("id") or "")
            return self.chunk({"role": "assistant", "content": ""})
        if kind == "content-delta":
            text = _dict(message.get("content")).get("text")
            return self.chunk({"content": text}) if isinstance(text, str) and text else None
        if kind == "tool-call-start":
            self.tool_index += 1
            call = _tool_call(_dict(message.get("tool_calls")))
            return self.chunk({"tool_calls": [{"index": self.tool_index, **call}]})
        if kind == "tool-call-delta" and self.tool_index >= 0:
            arguments = _dict(_dict(message.get("tool_calls")).get("function")).get("arguments")
            if isinstance(arguments, str) and arguments:
                delta = {"index": self.tool_index, "function": {"arguments": arguments}}
                return self.chunk({"tool_calls": [delta]})
        return None

    def chunk(self, delta: dict, *, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**self._envelope(), "choices": [choice]}

    def usage_chunk(self, usage: Usage) -> dict:
        return {**self._envelope(), "choices": [], "usage": usage.as_openai()}

    def _envelope(self) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }


# --- request translation --------------------------------------------------------------------


def _refuse_unsupported(payload: dict) -> None:
    """Refuse what Cohere cannot honour, rather than answer a different question."""
    if payload.get("n") not in (None, 1):
        raise InvalidRequest("Cohere providers return one choice; 'n' must be 1.", param="n")
    for name, message in _REFUSED.items():
        if payload.get(name):
            raise InvalidRequest(message, param=name)
    if payload.get("modalities") not in (None, ["text"]):
        raise InvalidRequest("Cohere providers answer in text only.", param="modalities")
    if payload.get("parallel_tool_calls") is False:
        raise InvalidRequest(
            "Cohere providers may call several tools at once; 'parallel_tool_calls: false' "
            "cannot be honoured.",
            param="parallel_tool_calls",
        )


def _sampling(payload: dict) -> dict:
    # Ranges differ (Cohere's penalties are 0-1, `p` 0.01-0.99): values are passed on and
    # refused by Cohere, rather than silently clamped.
    body = {cohere: payload[name] for name, cohere in _SAMPLING.items() if payload.get(name) is not None}
    for name in ("max_completion_tokens", "max_tokens"):
        if payload.get(name) is not None:
            body["max_tokens"] = payload[name]
            break
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return body


def _tools(payload: dict) -> dict:
    tools, choice = payload.get("tools") or [], payload.get("tool_choice")
    body: dict = {}
    if tools:
        functions = [_function(tool) for tool in tools]
        body["tools"] = [{"type": "function", "function": function} for function in functions]
        # Cohere's strictness is per request: on only when every function asked for it.
        if all(isinstance(tool.get("function"), dict) and tool["function"].get("strict") for tool in tools):
            body["strict_tools"] = True
    if choice is None:
        return body
    if isinstance(choice, dict):
        raise InvalidRequest(
            "Cohere providers cannot be made to call one named function; use 'tool_choice': "
            "'required' with only that function in 'tools'.",
            param="tool_choice",
        )
    if choice not in _TOOL_CHOICES:
        raise InvalidRequest("'tool_choice' must be 'auto', 'none' or 'required'.", param="tool_choice")
    if choice == "required" and not tools:
        raise InvalidRequest("'tool_choice': 'required' needs 'tools'.", param="tool_choice")
    if tools and _TOOL_CHOICES[choice]:
        body["tool_choice"] = _TOOL_CHOICES[choice]
    return body


def _function(tool: object) -> dict:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
        raise InvalidRequest("Cohere providers take tools of type 'function' only.", param="tools")
    return {key: function[key] for key in ("name", "description", "parameters") if key in function}


def _response_format(value: object) -> dict | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if value is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = _dict(value.get("json_schema")).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "'response_format.json_schema.schema' must be an object.", param="response_format"
            )
        return {"type": "json_object", "json_schema": schema}
    raise InvalidRequest(
        "'response_format' must be of type text, json_object or json_schema.", param="response_format"
    )


def _messages(messages: object) -> list[dict]:
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list.", param="messages")
    return [_message(message) for message in messages]


def _message(message: object) -> dict:
    role = message.get("role") if isinstance(message, dict) else None
    if role in ("system", "developer"):
        return {"role": "system", "content": _content(message.get("content"), images=False)}
    if role == "user":
        return {"role": "user", "content": _content(message.get("content"), images=True)}
    if role == "assistant":
        return _assistant_turn(message)
    if role == "tool":
        if not message.get("tool_call_id"):
            raise InvalidRequest("Tool messages need a 'tool_call_id'.", param="messages")
        content = _content(message.get("content"), images=False)
        return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": content}
    raise InvalidRequest(
        f"Messages with role {role!r} are not supported for Cohere providers.", param="messages"
    )


def _assistant_turn(message: dict) -> dict:
    if message.get("function_call"):
        raise InvalidRequest(
            "Legacy 'function_call' messages are not supported for Cohere providers.", param="messages"
        )
    turn: dict = {"role": "assistant"}
    content = message.get("content")
    if content or not message.get("tool_calls"):
        turn["content"] = _content(content, images=False)
    if message.get("tool_calls"):
        turn["tool_calls"] = [_tool_call(call) for call in message["tool_calls"]]
    return turn


def _tool_call(call: object) -> dict:
    call = _dict(call)
    function = _dict(call.get("function"))
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": str(call.get("id") or ""),
        "type": "function",
        "function": {"name": str(function.get("name") or ""), "arguments": arguments},
    }


def _content(content: object, *, images: bool) -> str | list[dict]:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidRequest("Message content must be a string or a list of parts.", param="messages")
    return [_part(part, images=images) for part in content]


def _part(part: object, *, images: bool) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("text", "refusal"):
        return {"type": "text", "text": str(part.get(kind) or "")}
    if kind == "image_url" and images:
        # Cohere's vision models take OpenAI's image part as is (url or data URL, detail).
        return {"type": "image_url", "image_url": part.get("image_url")}
    raise InvalidRequest(
        f"Content parts of type {kind!r} are not supported here for Cohere providers.",
        param="messages",
    )


# --- response translation -------------------------------------------------------------------


def _answer(message: dict) -> dict:
    text = "".join(
        str(item.get("text") or "")
        for item in message.get("content") or ()
        if isinstance(item, dict) and item.get("type") == "text"
    )
    tool_calls = [_tool_call(call) for call in message.get("tool_calls") or ()]
    answer = {"role": "assistant", "content": text if text or not tool_calls else None, "refusal": None}
    if tool_calls:
        answer["tool_calls"] = tool_calls
    return answer


def _finish_reason(reason: object) -> str | None:
    if reason is None:
        return None
    return _FINISH_REASONS.get(str(reason), "stop")


def _usage(data: object) -> Usage | None:
    """Chat's `usage` and Embed's `meta` both carry `billed_units` and `tokens`."""
    for name in ("billed_units", "tokens"):
        counts = _dict(data).get(name)
        if isinstance(counts, dict) and "input_tokens" in counts:
            return Usage(
                prompt_tokens=int(counts.get("input_tokens") or 0),
                completion_tokens=int(counts.get("output_tokens") or 0),
            )
    return None


def _delta_message(data: dict) -> dict:
    return _dict(_dict(data.get("delta")).get("message"))


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}
