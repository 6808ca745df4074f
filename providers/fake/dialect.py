"""The contract every vendor dialect follows, and the parsing helpers they share."""

from __future__ import annotations

import json
from dataclasses import dataclass

from providers.fake.content import ChatRequest, Completion
from providers.fake.directives import Directive, directive_build, directive_extract
from providers.fake.errors import ApiError


@dataclass
class Frames:
    """A stream's events: `early` go out with the headers, `lead` with the first content."""

    early: list[bytes]
    lead: list[bytes]
    content: list[bytes]
    tail: list[bytes]
    bad: bytes


class Dialect:
    """How one vendor spells auth, validation errors, answers and stream events.

    The server's behaviour (directives, timing, faults, sizes) is shared; a dialect only
    translates. Contract:
    - `authenticate(headers=, api_key=)` raises ApiError(401) when the key is missing or wrong;
    - `parse(body=, header_directive=, server_directive=)` returns a ChatRequest (its directive
      merged from the server-wide one, the header and the last user message, see
      `directive_build`) or raises ApiError(400) naming the bad field the way the vendor does;
    - `render(completion=)` is the non-streamed JSON body, `frames(completion=)` the stream;
    - `error(error=, request_id=)` is the error body and extra headers;
    - `context_error(tokens=)` is the vendor's "prompt too long" error; `models()` its model list.
    """

    id_prefix = ""
    request_id_header = "x-request-id"

    def authenticate(self, *, headers: dict[str, str], api_key: str | None) -> None:
        raise NotImplementedError

    def parse(
        self, *, body: dict, header_directive: str, server_directive: str = ""
    ) -> ChatRequest:
        raise NotImplementedError

    def render(self, *, completion: Completion) -> dict:
        raise NotImplementedError

    def frames(self, *, completion: Completion) -> Frames:
        raise NotImplementedError

    def error(
        self, *, error: ApiError, request_id: str
    ) -> tuple[dict, list[tuple[str, str]]]:
        raise NotImplementedError

    def context_error(self, *, tokens: int) -> ApiError:
        raise NotImplementedError

    def models(self) -> dict:
        raise NotImplementedError


def dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def message_text(content: object) -> str:
    """Text of a message's content: a string, or the text parts/blocks of a list."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    texts = [p.get("text") for p in parts if isinstance(p, dict)]
    return "\n".join(text for text in texts if isinstance(text, str))


def last_user_directive(
    *, messages: list[dict], texts: list[str], header: str, server: str = ""
) -> tuple[str, Directive]:
    last = next((t for m, t in zip(reversed(messages), reversed(texts)) if m["role"] == "user"), "")
    prompt, found = directive_extract(text=last)
    return prompt, directive_build(header=header, message=found, server=server)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stops_parse(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()
