"""Anthropic's dialect: the Messages API (plain and streamed), model list and errors.

References: https://docs.anthropic.com/en/docs/build-with-claude/streaming and
https://docs.anthropic.com/en/api/errors
"""

from __future__ import annotations

from providers.fake.content import CHAT_MODELS, ChatRequest, Completion, tokens_count
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


class AnthropicDialect(Dialect):
    """Anthropic's Messages API and its error shape."""

    id_prefix = "msg_"
    request_id_header = "request-id"
    ERRORS = {
        400: ("invalid_request_error", "Invalid request."),
        401: ("authentication_error", "invalid x-api-key"),
        402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
        403: ("permission_error", "Your API key does not have permission to use the specified "
                                  "resource."),
        404: ("not_found_error", "Not found."),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
        500: ("api_error", "Internal server error."),
        504: ("timeout_error", "Request timed out."),
        529: ("overloaded_error", "Overloaded"),
    }

    def authenticate(self, *, headers: dict[str, str], api_key: str | None) -> None:
        # The documented header is x-api-key, but anthropic-python 2.x sends its api_key as
        # "Authorization: Bearer"; the real API takes both, so the fake must too.
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        bearer = bearer.strip() if scheme.lower() == "bearer" else ""
        key = headers.get("x-api-key", "").strip() or bearer
        if not key:
            raise ApiError(401, "x-api-key header is required")
        if api_key is not None and key != api_key:
            raise ApiError(401, "invalid x-api-key")

    def error(
        self, *, error: ApiError, request_id: str
    ) -> tuple[dict, list[tuple[str, str]]]:
        kind, message = self.ERRORS.get(
            error.status,
            ("api_error" if error.status >= 500 else "invalid_request_error",
             f"Error {error.status}."),
        )
        body = {"type": "error", "error": {"type": kind, "message": error.message or message},
                "request_id": request_id}
        retry = [] if error.retry_after is None else [("retry-after", str(error.retry_after))]
        return body, retry

    def context_error(self, *, tokens: int) -> ApiError:
        return ApiError(400, f"prompt is too long: {200_000 + tokens} tokens > 200000 maximum")

    def parse(
        self, *, body: dict, header_directive: str, server_directive: str = ""
    ) -> ChatRequest:
        model, max_tokens = body.get("model"), body.get("max_tokens")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model: Field required")
        if not is_int(max_tokens) or max_tokens < 1:
            raise ApiError(400, "max_tokens: Field required" if max_tokens is None else
                           "max_tokens: Input should be a valid integer greater than or equal to 1")
        messages, system = body.get("messages"), self._system(body.get("system"))
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: at least one message is required")
        texts = [self._message(message, index=index) for index, message in enumerate(messages)]
        self._options(body)
        prompt, directive = last_user_directive(
            messages=messages, texts=texts, header=header_directive, server=server_directive)
        return ChatRequest(
            model=model, prompt=prompt, max_tokens=max_tokens,
            stop=stops_parse(body.get("stop_sequences")),
            prompt_tokens=tokens_count(text=system) + sum(3 + tokens_count(text=t) for t in texts),
            stream=body.get("stream") is True, include_usage=True, directive=directive,
        )

    @staticmethod
    def _system(system: object) -> str:
        blocks_ok = isinstance(system, list) and all(
            isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
            for b in system)
        if system is not None and not isinstance(system, str) and not blocks_ok:
            raise ApiError(400, "system: Input should be a valid string or a list of text blocks")
        return message_text(system or "")

    @staticmethod
    def _message(message: object, *, index: int) -> str:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ApiError(400, f"messages.{index}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        blocks_ok = isinstance(content, list) and all(
            isinstance(b, dict) and isinstance(b.get("type"), str) for b in content)
        if not isinstance(content, str) and not blocks_ok:
            raise ApiError(400, f"messages.{index}.content: Input should be a valid string or a "
                           "list of content blocks")
        return message_text(content)

    @staticmethod
    def _options(body: dict) -> None:
        stops, temperature = body.get("stop_sequences"), body.get("temperature")
        if stops is not None and (not isinstance(stops, list)
                                  or not all(isinstance(s, str) for s in stops)):
            raise ApiError(400, "stop_sequences: Input should be a valid list of strings")
        if temperature is not None and (isinstance(temperature, bool)
                                        or not isinstance(temperature, (int, float))
                                        or not 0 <= temperature <= 1):
            raise ApiError(400, "temperature: Input should be a number between 0 and 1")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise ApiError(400, "stream: Input should be a valid boolean")

    @staticmethod
    def _stop_reason(completion: Completion) -> str:
        return {"length": "max_tokens", "stop_sequence": "stop_sequence"}.get(
            completion.finish, "end_turn")

    def _message_body(self, completion: Completion, *, done: bool) -> dict:
        body = {"id": completion.id, "type": "message", "role": "assistant",
                "model": completion.request.model,
                "content": [{"type": "text", "text": completion.text}] if done else [],
                "stop_reason": self._stop_reason(completion) if done else None,
                "stop_sequence": completion.stop_sequence if done else None}
        if not completion.request.directive.no_usage:
            body["usage"] = {"input_tokens": completion.request.prompt_tokens,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                             "output_tokens": completion.completion_tokens if done else 1}
        return body

    def render(self, *, completion: Completion) -> dict:
        return self._message_body(completion, done=True)

    @staticmethod
    def _event(payload: dict) -> bytes:
        return b"event: " + payload["type"].encode() + b"\ndata: " + dumps(payload) + b"\n\n"

    def frames(self, *, completion: Completion) -> Frames:
        start = {"type": "message_start", "message": self._message_body(completion, done=False)}
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop_reason(completion),
                                                    "stop_sequence": completion.stop_sequence}}
        if not completion.request.directive.no_usage:
            delta["usage"] = {"output_tokens": completion.completion_tokens}
        return Frames(
            early=[self._event(start),
                   self._event({"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
                   self._event({"type": "ping"})],
            lead=[],
            content=[self._event({"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": piece}})
                     for piece in completion.pieces],
            tail=[self._event({"type": "content_block_stop", "index": 0}), self._event(delta),
                  self._event({"type": "message_stop"})],
            bad=b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":\n\n',
        )

    def models(self) -> dict:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in CHAT_MODELS if m.startswith("claude")]
        return {"data": data, "has_more": False, "first_id": data[0]["id"],
                "last_id": data[-1]["id"]}
