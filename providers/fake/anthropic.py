"""Anthropic's dialect: the Messages API (plain and streamed), model list and errors.

Tool use: a request declaring `tools` gets a `tool_use` block (stop_reason `tool_use`) when its
`tool_choice` forces one or its last user message says `[[fake tool=NAME]]`; a request whose last
turn carries tool results gets text. Tool definitions, tool choice and the pairing of tool_use
and tool_result blocks are checked as the real API checks them.

References: https://docs.anthropic.com/en/docs/build-with-claude/streaming,
https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use and
https://docs.anthropic.com/en/api/errors
"""

from __future__ import annotations

import re

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
from providers.fake.tools import tool_arguments, tool_choose

_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
TOOL_PIECES = 4  # input_json_delta events for a tool call's input, unless `chunks=N` says otherwise


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
        tools = self._tools(body.get("tools"))
        choice = self._tool_choice(body.get("tool_choice"), tools=tools)
        self._tool_turns(messages)
        prompt, directive = last_user_directive(
            messages=messages, texts=texts, header=header_directive, server=server_directive)
        tool_tokens = tokens_count(text=dumps(body["tools"]).decode()) if tools else 0
        return ChatRequest(
            model=model, prompt=prompt, max_tokens=max_tokens,
            stop=stops_parse(body.get("stop_sequences")),
            prompt_tokens=tokens_count(text=system) + sum(3 + tokens_count(text=t) for t in texts)
            + tool_tokens,
            stream=body.get("stream") is True, include_usage=True, directive=directive,
            tool_call=self._tool_call(tools=tools, choice=choice, directed=directive.tool,
                                      last=messages[-1]),
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

    # --- tools ------------------------------------------------------------------------------

    @staticmethod
    def _tools(tools: object) -> dict[str, dict]:
        """The declared tools as {name: input_schema}."""
        if tools is None:
            return {}
        if not isinstance(tools, list):
            raise ApiError(400, "tools: Input should be a valid list")
        found: dict[str, dict] = {}
        for index, tool in enumerate(tools):
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                raise ApiError(400, f"tools.{index}.custom.name: String should match pattern "
                               "'^[a-zA-Z0-9_-]{1,64}$'")
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise ApiError(400, f"tools.{index}.custom.input_schema.type: Input should be "
                               "'object'")
            if name in found:
                raise ApiError(400, "tools: Tool names must be unique.")
            found[name] = schema
        return found

    @staticmethod
    def _tool_choice(choice: object, *, tools: dict[str, dict]) -> dict:
        if choice is None:
            return {"type": "auto"}
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in _TOOL_CHOICES:
            raise ApiError(400, "tool_choice: Input tag does not match any of the expected tags: "
                           "'auto', 'any', 'tool', 'none'")
        if kind in ("any", "tool") and not tools:
            raise ApiError(400, f"tool_choice: tool_choice.type '{kind}' requires tools")
        if kind == "tool" and choice.get("name") not in tools:
            raise ApiError(400, f"tool_choice.name: Tool '{choice.get('name')}' not found in tools")
        if not isinstance(choice.get("disable_parallel_tool_use", False), bool):
            raise ApiError(400, "tool_choice.disable_parallel_tool_use: Input should be a valid "
                           "boolean")
        return choice

    @staticmethod
    def _tool_turns(messages: list) -> None:
        """Each tool_use must be answered by a tool_result in the very next turn, results first."""
        pending: list[str] = []
        for index, message in enumerate(messages):
            content = message["content"]
            blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
            kinds = [b["type"] for b in blocks]
            results = [b.get("tool_use_id") for b in blocks if b["type"] == "tool_result"]
            if missing := [i for i in pending if i not in results]:
                raise ApiError(400, f"messages.{index}: `tool_use` ids were found without "
                               f"`tool_result` blocks immediately after: {', '.join(missing)}. "
                               "Each `tool_use` block must have a corresponding `tool_result` "
                               "block in the next message.")
            if unexpected := [i for i in results if i not in pending]:
                raise ApiError(400, f"messages.{index}: unexpected `tool_use_id` found in "
                               f"`tool_result` blocks: {unexpected[0]}. Each `tool_result` block "
                               "must have a corresponding `tool_use` block in the previous message.")
            if "tool_result" in kinds[len(results):]:
                raise ApiError(400, f"messages.{index}: tool_result blocks must come first in "
                               "the message content, before any other block.")
            uses = [b for b in blocks if b["type"] == "tool_use"]
            if uses and (message["role"] != "assistant" or not all(
                    isinstance(b.get("id"), str) and isinstance(b.get("name"), str)
                    and isinstance(b.get("input"), dict) for b in uses)):
                raise ApiError(400, f"messages.{index}: tool_use blocks belong in assistant "
                               "messages and need an id, a name and an input object.")
            pending = [b["id"] for b in uses]

    @staticmethod
    def _tool_call(
        *, tools: dict[str, dict], choice: dict, directed: str | None, last: dict
    ) -> tuple[str, dict] | None:
        kind = choice["type"]
        if kind == "none":
            return None
        forced = choice["name"] if kind == "tool" else None
        if kind == "any":
            forced = directed or next(iter(tools))
        content = last["content"] if isinstance(last["content"], list) else []
        answered = any(isinstance(b, dict) and b["type"] == "tool_result" for b in content)
        name = tool_choose(tools=tools, forced=forced, directed=directed,
                           last_role="tool" if answered else last["role"])
        return (name, tool_arguments(tools[name], name=name)) if name else None

    # --- answers ------------------------------------------------------------------------------

    @staticmethod
    def _stop_reason(completion: Completion) -> str:
        if completion.request.tool_call:
            return "tool_use"
        return {"length": "max_tokens", "stop_sequence": "stop_sequence"}.get(
            completion.finish, "end_turn")

    def _tool_use(self, completion: Completion, *, done: bool) -> dict:
        name, arguments = completion.request.tool_call
        return {"type": "tool_use", "id": "toolu_" + completion.id.removeprefix(self.id_prefix),
                "name": name, "input": arguments if done else {}}

    def _content(self, completion: Completion) -> list[dict]:
        if completion.request.tool_call:
            return [self._tool_use(completion, done=True)]
        return [{"type": "text", "text": completion.text}]

    @staticmethod
    def _stop_sequence(completion: Completion) -> str | None:
        return None if completion.request.tool_call else completion.stop_sequence

    def _message_body(self, completion: Completion, *, done: bool) -> dict:
        body = {"id": completion.id, "type": "message", "role": "assistant",
                "model": completion.request.model,
                "content": self._content(completion) if done else [],
                "stop_reason": self._stop_reason(completion) if done else None,
                "stop_sequence": self._stop_sequence(completion) if done else None}
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

    def _deltas(self, completion: Completion) -> list[dict]:
        """The content_block_delta payloads: text pieces, or a tool call's input in pieces."""
        if not completion.request.tool_call:
            return [{"type": "text_delta", "text": piece} for piece in completion.pieces]
        text = dumps(completion.request.tool_call[1]).decode()
        count = completion.request.directive.chunks or TOOL_PIECES
        size = max(-(-len(text) // count), 1)
        return [{"type": "input_json_delta", "partial_json": text[i:i + size]}
                for i in range(0, len(text), size)]

    def frames(self, *, completion: Completion) -> Frames:
        start = {"type": "message_start", "message": self._message_body(completion, done=False)}
        delta = {"type": "message_delta", "delta": {
            "stop_reason": self._stop_reason(completion),
            "stop_sequence": self._stop_sequence(completion)}}
        if not completion.request.directive.no_usage:
            delta["usage"] = {"output_tokens": completion.completion_tokens}
        block = (self._tool_use(completion, done=False) if completion.request.tool_call
                 else {"type": "text", "text": ""})
        return Frames(
            early=[self._event(start),
                   self._event({"type": "content_block_start", "index": 0,
                                "content_block": block}),
                   self._event({"type": "ping"})],
            lead=[],
            content=[self._event({"type": "content_block_delta", "index": 0, "delta": piece})
                     for piece in self._deltas(completion)],
            tail=[self._event({"type": "content_block_stop", "index": 0}), self._event(delta),
                  self._event({"type": "message_stop"})],
            bad=b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":\n\n',
        )

    def models(self) -> dict:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in CHAT_MODELS if m.startswith("claude")]
        return {"data": data, "has_more": False, "first_id": data[0]["id"],
                "last_id": data[-1]["id"]}
