"""Cohere's dialect: Chat API v2 (plain and streamed, with tool calls), Embed API v2 and errors.

References: https://docs.cohere.com/reference/chat, https://docs.cohere.com/docs/streaming,
https://docs.cohere.com/docs/tool-use-streaming, https://docs.cohere.com/reference/embed and
https://docs.cohere.com/reference/errors
"""

from __future__ import annotations

import json
import uuid

from providers.fake.content import (
    CONTEXT_WINDOW,
    DEFAULT_DIMENSIONS,
    ChatRequest,
    Completion,
    embedding_vector,
    tokens_count,
)
from providers.fake.dialect import (
    Dialect,
    Frames,
    dumps,
    is_int,
    last_user_directive,
    message_text,
    stops_parse,
)
from providers.fake.errors import ApiError
from providers.fake.tools import tool_arguments, tool_choose

# Every field Chat v2 documents; anything else is refused, so an adapter sending OpenAI's
# spelling (`top_p`, `stop`, `tool_choice: "auto"`...) is caught here rather than in production.
CHAT_FIELDS = frozenset({
    "model", "messages", "tools", "strict_tools", "documents", "citation_options",
    "response_format", "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed",
    "frequency_penalty", "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking",
    "stream", "priority",
})
EMBED_FIELDS = frozenset({
    "model", "texts", "images", "inputs", "input_type", "embedding_types", "output_dimension",
    "truncate", "max_tokens", "priority",
})
ROLES = ("system", "user", "assistant", "tool")
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
OUTPUT_DIMENSIONS = (256, 512, 1024, 1536)
MAX_TEXTS = 96
# `tokens.input_tokens` also counts the prompt template Cohere wraps around the messages, which
# `billed_units` leaves out.
TEMPLATE_TOKENS = 64
FINISH_REASONS = {"length": "MAX_TOKENS", "stop_sequence": "STOP_SEQUENCE"}


class CohereDialect(Dialect):
    """Cohere's Chat v2 and its error shape, `{"id", "message"}`."""

    id_prefix = ""
    ERRORS = {
        400: "invalid request",
        401: "invalid api token",
        402: "Please add or update your payment method at "
             "https://dashboard.cohere.com/billing?tab=payment to continue",
        404: "model not found, make sure the correct model ID was used and that you have access "
             "to the model.",
        429: "You are past the per minute request limit, please wait and try again later.",
        499: "request cancelled",
        500: "internal server error, this has been reported to our developers",
        503: "service unavailable",
        504: "gateway timeout",
    }

    def authenticate(self, *, headers: dict[str, str], api_key: str | None) -> None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "no api key supplied")
        if api_key is not None and key.strip() != api_key:
            raise ApiError(401, "invalid api token")

    def error(
        self, *, error: ApiError, request_id: str
    ) -> tuple[dict, list[tuple[str, str]]]:
        message = error.message or self.ERRORS.get(error.status, f"error {error.status}")
        headers = [] if error.retry_after is None else [("retry-after", str(error.retry_after))]
        return {"id": str(uuid.uuid4()), "message": message}, headers

    def context_error(self, *, tokens: int) -> ApiError:
        return ApiError(
            400, f"too many tokens: total number of tokens in the prompt cannot exceed "
            f"{CONTEXT_WINDOW} - received {CONTEXT_WINDOW + tokens}. Try using a shorter prompt, "
            "or enabling prompt truncating. See https://docs.cohere.com/reference/chat for more "
            "details.",
        )

    # --- requests -------------------------------------------------------------------------------
    def parse(
        self, *, body: dict, header_directive: str, server_directive: str = ""
    ) -> ChatRequest:
        _refuse_unknown(body, CHAT_FIELDS)
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "invalid request: model is required")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "invalid request: messages must be a non-empty list")
        texts = [self._message(message, index=index) for index, message in enumerate(messages)]
        self._options(body)
        prompt, directive = last_user_directive(
            messages=messages, texts=texts, header=header_directive, server=server_directive)
        return ChatRequest(
            model=model, prompt=prompt, max_tokens=body.get("max_tokens"),
            prompt_tokens=sum(tokens_count(text=text) for text in texts),
            stop=stops_parse(body.get("stop_sequences")), stream=body.get("stream") is True,
            include_usage=True, directive=directive,
            tool_call=self._tool_call(body, directive.tool, messages[-1]["role"]),
        )

    @staticmethod
    def _message(message: object, *, index: int) -> str:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"invalid request: messages[{index}].role must be one of "
                           f"{', '.join(ROLES)}")
        content, role = message.get("content"), message["role"]
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise ApiError(400, f"invalid request: messages[{index}].tool_call_id is required")
        if role == "assistant" and message.get("tool_calls") is not None:
            _tool_calls_check(message["tool_calls"], index=index)
        elif content is None or (not isinstance(content, str) and not _parts_ok(content)):
            raise ApiError(400, f"invalid request: messages[{index}].content must be a string or "
                           "a list of content items")
        return message_text(content)

    @staticmethod
    def _options(body: dict) -> None:
        max_tokens, stops = body.get("max_tokens"), body.get("stop_sequences")
        if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
            raise ApiError(400, "invalid request: max_tokens must be a positive integer")
        if stops is not None and (not isinstance(stops, list) or len(stops) > 5
                                  or not all(isinstance(s, str) for s in stops)):
            raise ApiError(400, "invalid request: stop_sequences must be a list of at most 5 "
                           "strings")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise ApiError(400, "invalid request: stream must be a boolean")
        if body.get("tool_choice") not in (None, "REQUIRED", "NONE"):
            raise ApiError(400, "invalid request: tool_choice must be one of REQUIRED, NONE")
        p = body.get("p")
        if p is not None and (not isinstance(p, (int, float)) or not 0.01 <= p <= 0.99):
            raise ApiError(400, "invalid request: p must be between 0.01 and 0.99")

    @staticmethod
    def _tool_call(body: dict, directed: str | None, last_role: str) -> tuple[str, dict] | None:
        tools = body.get("tools")
        if tools is not None and (not isinstance(tools, list) or not all(
                isinstance(t, dict) and t.get("type") == "function"
                and isinstance(t.get("function"), dict) and t["function"].get("name")
                for t in tools)):
            raise ApiError(400, "invalid request: tools must be a list of function tools")
        schemas = {t["function"]["name"]: t["function"].get("parameters") or {}
                   for t in tools or ()}
        choice = body.get("tool_choice")
        if choice == "REQUIRED" and not schemas:
            raise ApiError(400, "invalid request: tool_choice REQUIRED needs tools")
        if choice == "NONE":
            return None
        forced = (directed or next(iter(schemas))) if choice == "REQUIRED" else None
        name = tool_choose(tools=schemas, forced=forced, directed=directed, last_role=last_role)
        return (name, tool_arguments(schemas[name], name=name)) if name else None

    # --- answers --------------------------------------------------------------------------------
    def render(self, *, completion: Completion) -> dict:
        call = _ToolCall.of(completion)
        message = ({"role": "assistant", "tool_plan": call.plan, "tool_calls": [call.body()]}
                   if call else
                   {"role": "assistant", "content": [{"type": "text", "text": completion.text}]})
        body = {"id": completion.id, "finish_reason": _finish(completion), "message": message}
        if not completion.request.directive.no_usage:
            body["usage"] = _usage(completion)
        return body

    def frames(self, *, completion: Completion) -> Frames:
        start = {"id": completion.id, "type": "message-start", "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
            "citations": []}}}
        end: dict = {"type": "message-end", "delta": {"finish_reason": _finish(completion)}}
        if not completion.request.directive.no_usage:
            end["delta"]["usage"] = _usage(completion)
        bad = b'event: content-delta\ndata: {"type":"content-delta","index":0,"delta":\n\n'
        if call := _ToolCall.of(completion):
            return Frames(early=[_event(start)], lead=[], content=call.events(), tail=[_event(end)],
                          bad=bad)
        content_start = {"type": "content-start", "index": 0,
                         "delta": {"message": {"content": {"type": "text", "text": ""}}}}
        return Frames(
            early=[_event(start), _event(content_start)], lead=[],
            content=[_event({"type": "content-delta", "index": 0,
                             "delta": {"message": {"content": {"text": piece}}}})
                     for piece in completion.pieces],
            tail=[_event({"type": "content-end", "index": 0}), _event(end)], bad=bad,
        )

    def models(self) -> dict:
        return {"models": [{"name": "command-a-03-2025", "endpoints": ["chat"]},
                           {"name": "embed-v4.0", "endpoints": ["embed"]}]}


class _ToolCall:
    """A completion answered with a tool call: Cohere's plan, the call, and their stream events."""

    def __init__(self, completion: Completion, name: str, arguments: dict) -> None:
        self.name, self.arguments = name, json.dumps(arguments)
        self.id = f"{name}_{completion.id[:12].lower()}"
        self.plan = f"I will call {name} to answer this."

    @classmethod
    def of(cls, completion: Completion) -> _ToolCall | None:
        call = completion.request.tool_call
        return cls(completion, *call) if call else None

    @property
    def tokens(self) -> int:
        return tokens_count(text=self.plan) + tokens_count(text=self.arguments)

    def body(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}

    def events(self) -> list[bytes]:
        """tool-plan-delta per word, then the call: start (name, empty arguments), deltas, end."""
        words = self.plan.split(" ")
        plan = [_event({"type": "tool-plan-delta",
                        "delta": {"message": {"tool_plan": (" " if i else "") + word}}})
                for i, word in enumerate(words)]
        start = {**self.body(), "function": {"name": self.name, "arguments": ""}}
        third = max(len(self.arguments) // 3, 1)
        pieces = [self.arguments[i:i + third] for i in range(0, len(self.arguments), third)]
        deltas = [_event({"type": "tool-call-delta", "index": 0, "delta": {"message": {
            "tool_calls": {"function": {"arguments": piece}}}}}) for piece in pieces]
        return plan + [
            _event({"type": "tool-call-start", "index": 0,
                    "delta": {"message": {"tool_calls": start}}}),
            *deltas,
            _event({"type": "tool-call-end", "index": 0}),
        ]


def _finish(completion: Completion) -> str:
    if completion.request.tool_call:
        return "TOOL_CALL"
    return FINISH_REASONS.get(completion.finish, "COMPLETE")


def _usage(completion: Completion) -> dict:
    call = _ToolCall.of(completion)
    prompt = completion.request.prompt_tokens
    output = call.tokens if call else completion.completion_tokens
    return {"billed_units": {"input_tokens": prompt, "output_tokens": output},
            "tokens": {"input_tokens": prompt + TEMPLATE_TOKENS, "output_tokens": output}}


def _event(payload: dict) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + dumps(payload) + b"\n\n"


def _refuse_unknown(body: dict, fields: frozenset[str]) -> None:
    for name in body:
        if name not in fields:
            raise ApiError(400, f"invalid request: unknown field: parameter '{name}' is not a "
                           "valid field")


def _parts_ok(content: object) -> bool:
    return isinstance(content, list) and all(
        isinstance(part, dict) and isinstance(part.get("type"), str) for part in content)


def _tool_calls_check(calls: object, *, index: int) -> None:
    ok = isinstance(calls, list) and all(
        isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("function"), dict)
        and isinstance(c["function"].get("name"), str)
        and isinstance(c["function"].get("arguments"), str) for c in calls)
    if not ok:
        raise ApiError(400, f"invalid request: messages[{index}].tool_calls must be a list of "
                       "{id, type, function: {name, arguments}}")


# --- Embed v2 ---------------------------------------------------------------------------------


def embed_parse(*, body: dict) -> tuple[str, list[str], int]:
    """(model, texts, dimensions) of an Embed v2 request; the fake embeds texts as floats only."""
    _refuse_unknown(body, EMBED_FIELDS)
    model, texts = body.get("model"), body.get("texts")
    types, dimensions = body.get("embedding_types"), body.get("output_dimension")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "invalid request: model is required")
    if not isinstance(texts, list) or not 0 < len(texts) <= MAX_TEXTS or not all(
            isinstance(text, str) and text for text in texts):
        raise ApiError(400, f"invalid request: texts must be a list of 1 to {MAX_TEXTS} non-empty "
                       "strings")
    if body.get("input_type") not in INPUT_TYPES:
        raise ApiError(400, f"invalid request: input_type must be one of {', '.join(INPUT_TYPES)}")
    if types != ["float"]:
        raise ApiError(400, "invalid request: embedding_types is required; the fake provider "
                       'serves ["float"] only')
    if dimensions is not None and dimensions not in OUTPUT_DIMENSIONS:
        raise ApiError(400, "invalid request: output_dimension must be one of "
                       f"{', '.join(map(str, OUTPUT_DIMENSIONS))}")
    return model, texts, dimensions or DEFAULT_DIMENSIONS


def embed_body(*, model: str, texts: list[str], dimensions: int, tokens: int | None) -> dict:
    """The Embed v2 answer; `tokens` None leaves the billed units out (`no_usage`)."""
    meta: dict = {"api_version": {"version": "2"}}
    if tokens is not None:
        meta["billed_units"] = {"input_tokens": tokens}
    vectors = [embedding_vector(model=model, item=text, dimensions=dimensions) for text in texts]
    return {"id": str(uuid.uuid4()), "embeddings": {"float": vectors}, "texts": texts,
            "meta": meta, "response_type": "embeddings_by_type"}
