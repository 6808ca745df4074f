"""OpenAI's dialect: chat completions (plain and streamed), embeddings, model list and errors.

Reference: https://platform.openai.com/docs/api-reference/chat/object (and .../chunk-object)
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct

from providers.fake.content import (
    CHAT_MODELS,
    CONTEXT_WINDOW,
    DEFAULT_DIMENSIONS,
    EMBEDDING_MODELS,
    MAX_DIMENSIONS,
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


class OpenAIDialect(Dialect):
    """OpenAI's chat completions, embeddings and error object."""

    id_prefix = "chatcmpl-"
    # status: (error type, code, message). 429 is spelled as a requests-per-minute limit.
    ERRORS = {
        400: ("invalid_request_error", None, "Invalid request."),
        401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
        403: ("invalid_request_error", "unsupported_country_region_territory",
              "Country, region, or territory not supported."),
        404: ("invalid_request_error", "model_not_found",
              "The model does not exist or you do not have access to it."),
        413: ("invalid_request_error", None, "Request too large."),
        429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
        500: ("server_error", None,
              "The server had an error while processing your request. Sorry about that!"),
        503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    }

    def authenticate(self, *, headers: dict[str, str], api_key: str | None) -> None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "You didn't provide an API key. You need to provide your API key "
                           "in an Authorization header using Bearer auth (i.e. Authorization: "
                           "Bearer YOUR_KEY).")
        if api_key is not None and key.strip() != api_key:
            raise ApiError(401, f"Incorrect API key provided: {key[:3]}***{key[-2:]}.")

    def error(
        self, *, error: ApiError, request_id: str
    ) -> tuple[dict, list[tuple[str, str]]]:
        kind, code, message = self.ERRORS.get(
            error.status,
            ("server_error" if error.status >= 500 else "invalid_request_error", None,
             f"Error {error.status}."),
        )
        body = {"error": {"message": error.message or message, "type": kind,
                          "param": error.param, "code": error.code or code}}
        headers = []
        if error.retry_after is not None:
            headers = [("retry-after", str(error.retry_after)),
                       ("x-ratelimit-reset-requests", f"{error.retry_after}s")]
        return body, headers

    def context_error(self, *, tokens: int) -> ApiError:
        return ApiError(
            400, f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, your "
            f"messages resulted in {CONTEXT_WINDOW + tokens} tokens. Please reduce the length of "
            "the messages.", param="messages", code="context_length_exceeded",
        )

    def parse(
        self, *, body: dict, header_directive: str, server_directive: str = ""
    ) -> ChatRequest:
        model = self._required(body, name="model", kind=str, label="a string")
        messages = self._required(body, name="messages", kind=list, label="an array of objects")
        if not messages:
            raise ApiError(400, "Invalid 'messages': empty array. Expected an array with minimum "
                           "length 1, but got an empty array instead.", param="messages",
                           code="empty_array")
        texts = [self._message(message, index=index) for index, message in enumerate(messages)]
        prompt, directive = last_user_directive(
            messages=messages, texts=texts, header=header_directive, server=server_directive)
        options = body.get("stream_options") or {}
        return ChatRequest(
            model=model, prompt=prompt, max_tokens=self._max_tokens(body),
            prompt_tokens=3 + sum(4 + tokens_count(text=t) for t in texts),
            stop=stops_parse(body.get("stop")), stream=body.get("stream") is True,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            directive=directive, tool_call=self._tool_call(body, directive.tool, messages),
            structured=self._structured(body.get("response_format")),
            choices=self._choices(body),
        )

    @staticmethod
    def _choices(body: dict) -> int:
        """`n`: 1 to 128 choices (https://platform.openai.com/docs/api-reference/chat/create#chat-create-n)."""
        value = body.get("n")
        if value is None:
            return 1
        if not is_int(value) or not 1 <= value <= 128:
            raise ApiError(400, f"Invalid 'n': expected an integer from 1 to 128, but got {value!r} "
                           "instead.", param="n", code="invalid_value")
        return value

    @staticmethod
    def _structured(response_format: object) -> dict | None:
        if not isinstance(response_format, dict):
            return None
        if response_format.get("type") == "json_object":
            return {"type": "object", "properties": {"answer": {"type": "string"}}}
        if response_format.get("type") == "json_schema":
            return (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
        return None

    @staticmethod
    def _tool_call(body: dict, directed: str | None, messages: list) -> tuple[str, dict] | None:
        tools = {
            tool["function"]["name"]: tool["function"].get("parameters") or {}
            for tool in body.get("tools") or ()
            if isinstance(tool, dict) and isinstance(tool.get("function"), dict) and tool["function"].get("name")
        }
        choice = body.get("tool_choice")
        forced = None
        if isinstance(choice, dict):
            forced = (choice.get("function") or {}).get("name")
        elif choice == "required" and tools:
            forced = next(iter(tools))
        last_role = messages[-1].get("role") if isinstance(messages[-1], dict) else ""
        name = tool_choose(tools=tools, forced=forced, directed=directed, last_role=last_role)
        return (name, tool_arguments(tools[name], name=name)) if name else None

    @staticmethod
    def _required(body: dict, *, name: str, kind: type, label: str) -> object:
        if name not in body:
            raise ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                           code="missing_required_parameter")
        if not isinstance(body[name], kind):
            raise ApiError(400, f"Invalid type for '{name}': expected {label}, but got "
                           f"{type(body[name]).__name__} instead.", param=name, code="invalid_type")
        return body[name]

    @staticmethod
    def _message(message: object, *, index: int) -> str:
        roles = ("system", "developer", "user", "assistant", "tool", "function")
        if not isinstance(message, dict) or message.get("role") not in roles:
            raise ApiError(400, f"Invalid value for 'messages[{index}].role': supported values are "
                           f"{', '.join(roles)}.", param=f"messages[{index}].role",
                           code="invalid_value")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ApiError(400, f"Invalid type for 'messages[{index}].content'.",
                           param=f"messages[{index}].content", code="invalid_type")
        return message_text(content)

    @staticmethod
    def _max_tokens(body: dict) -> int | None:
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if not is_int(value) or value < 1:
                raise ApiError(400, f"Invalid '{name}': expected an integer of at least 1.",
                               param=name, code="invalid_value")
            return value
        return None

    def _usage(self, completion: Completion) -> dict:
        # "You will be charged based on the number of generated tokens across all of the
        # choices": the prompt once, every choice's completion.
        prompt, done = completion.request.prompt_tokens, completion.billed_completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    def _envelope(self, completion: Completion, kind: str) -> dict:
        fingerprint = "fp_" + hashlib.sha256(completion.request.model.encode()).hexdigest()[:10]
        return {"id": completion.id, "object": kind, "created": completion.created,
                "model": completion.request.model, "service_tier": "default",
                "system_fingerprint": fingerprint}

    @staticmethod
    def _tool_calls(completion: Completion) -> list[dict]:
        name, arguments = completion.request.tool_call
        return [{"id": "call_" + completion.id[-24:], "type": "function",
                 "function": {"name": name, "arguments": json.dumps(arguments)}}]

    def render(self, *, completion: Completion) -> dict:
        body = self._envelope(completion, "chat.completion") | {
            "choices": [self._choice(choice, index) for index, choice in enumerate(completion.choices)]
        }
        if not completion.request.directive.no_usage:
            body["usage"] = self._usage(completion)
        return body

    def _choice(self, completion: Completion, index: int) -> dict:
        finish = "length" if completion.finish == "length" else "stop"
        message = {"role": "assistant", "content": completion.text, "refusal": None,
                   "annotations": []}
        if completion.request.tool_call:
            message["content"], message["tool_calls"], finish = None, self._tool_calls(completion), "tool_calls"
        return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}

    def _chunk(self, completion: Completion, delta: dict, finish: str | None = None, *,
               index: int = 0) -> bytes:
        chunk = self._envelope(completion, "chat.completion.chunk") | {
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]
        }
        if completion.request.include_usage:
            chunk["usage"] = None
        return b"data: " + dumps(chunk) + b"\n\n"

    def _tool_frames(self, completion: Completion, index: int) -> list[bytes]:
        [call] = self._tool_calls(completion)
        arguments = call["function"]["arguments"]
        third = max(len(arguments) // 3, 1)
        start = {"index": 0, "id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"], "arguments": ""}}
        pieces = [arguments[i:i + third] for i in range(0, len(arguments), third)]
        return [self._chunk(completion, {"tool_calls": [start]}, index=index)] + [
            self._chunk(completion, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                        index=index)
            for piece in pieces
        ]

    def _content_frames(self, completion: Completion, index: int) -> list[bytes]:
        if completion.request.tool_call:
            return self._tool_frames(completion, index)
        return [self._chunk(completion, {"content": piece}, index=index) for piece in completion.pieces]

    def _finish(self, completion: Completion, index: int) -> bytes:
        finish = "length" if completion.finish == "length" else "stop"
        if completion.request.tool_call:
            finish = "tool_calls"
        return self._chunk(completion, {}, finish, index=index)

    def frames(self, *, completion: Completion) -> Frames:
        """With `n` choices, each choice's events carry its `index`: every choice's role event
        first, then each choice's content in turn, then every choice's finish."""
        choices = list(enumerate(completion.choices))
        tail = [self._finish(choice, index) for index, choice in choices]
        if completion.request.include_usage and not completion.request.directive.no_usage:
            last = self._envelope(completion, "chat.completion.chunk") | {
                "choices": [], "usage": self._usage(completion)}
            tail.append(b"data: " + dumps(last) + b"\n\n")
        role = {"role": "assistant", "content": "", "refusal": None}
        return Frames(
            early=[],
            lead=[self._chunk(choice, role, index=index) for index, choice in choices],
            content=[frame for index, choice in choices for frame in self._content_frames(choice, index)],
            tail=tail + [b"data: [DONE]\n\n"],
            bad=b'data: {"id":"' + completion.id.encode() + b'","choices":[{"delta":\n\n',
        )

    def models(self) -> dict:
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                for m in CHAT_MODELS + EMBEDDING_MODELS]
        return {"object": "list", "data": data}


# --- embeddings (OpenAI only) -----------------------------------------------------------------


def embedding_inputs(*, value: object) -> list[str | list[int]]:
    """OpenAI's four input forms: a string, strings, a token array, or token arrays."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(is_int(v) for v in value):
        value = [value]
    ok = isinstance(value, list) and value and all(
        (isinstance(v, str) and v) or (isinstance(v, list) and v and all(is_int(t) for t in v))
        for v in value)
    if not ok:
        raise ApiError(400, "'input' must be a non-empty string, array of strings, array of "
                       "tokens, or array of token arrays.", param="input", code="invalid_value")
    return value


def embedding_options(*, body: dict) -> tuple[str, int, str]:
    model = OpenAIDialect._required(body, name="model", kind=str, label="a string")
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    encoding = body.get("encoding_format") or "float"
    if not is_int(dimensions) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise ApiError(400, f"Invalid 'dimensions': expected an integer from 1 to "
                       f"{MAX_DIMENSIONS}.", param="dimensions", code="invalid_value")
    if encoding not in ("float", "base64"):
        raise ApiError(400, "Invalid 'encoding_format': expected 'float' or 'base64'.",
                       param="encoding_format", code="invalid_value")
    return model, dimensions, encoding


def embedding_item(
    *, model: str, item: str | list[int], dimensions: int, encoding: str, index: int
) -> dict:
    vector = embedding_vector(model=model, item=item, dimensions=dimensions)
    if encoding == "base64":  # little-endian float32, as the openai SDK decodes it
        vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
    return {"object": "embedding", "index": index, "embedding": vector}
