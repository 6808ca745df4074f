"""`[[fake ...]]` directives: what one request asks the fake to do wrong, or slowly.

They come from the last user message or the `x-fake-directive` header, on top of the server-wide
directive (`PUT /_fake/directive`, `--directive`); docs/fake-provider.md has the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from providers.fake.errors import ApiError

_DIRECTIVE_RE = re.compile(r"\[\[fake\b([^\]]*)\]\]")
_INT_KEYS = frozenset(
    {"status", "retry_after", "delay_ms", "ttft_ms", "chunk_delay_ms", "chunks",
     "disconnect_after", "stall_after"}
)
_FLAG_KEYS = frozenset(
    {"context_length_exceeded", "timeout", "no_usage", "malformed", "bad_json", "echo", "quote_key"}
)
# `tool=NAME`: answer with a call of the declared tool NAME (dialects that support tools).
_NAME_KEYS = frozenset({"tool"})
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class Directive:
    """What one request asked the fake to do wrong, or slowly (see docs/fake-provider.md)."""

    status: int | None = None
    retry_after: int | None = None
    delay_ms: int | None = None
    ttft_ms: int = 0
    chunk_delay_ms: int | None = None
    chunks: int | None = None
    disconnect_after: int | None = None
    stall_after: int | None = None
    context_length_exceeded: bool = False
    timeout: bool = False
    no_usage: bool = False
    malformed: bool = False
    tool: str | None = None
    bad_json: bool = False  # structured output that does not parse (to test repair)
    echo: bool = False  # answer with the prompt itself, in 5-character pieces (to test guardrails)
    quote_key: bool = False  # an error whose message quotes the key sent, whole (to test scrubbing)


def directive_parse(*, text: str) -> dict[str, int | bool | str]:
    """Read space-separated `key=N` and flag words; a typo is a 400, never a silent no-op."""
    found: dict[str, int | bool] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if key in _FLAG_KEYS and not sep:
            found[key] = True
        elif key in _INT_KEYS and sep and value.isascii() and value.isdigit():
            found[key] = int(value)
        elif key in _NAME_KEYS and sep and _NAME_RE.fullmatch(value):
            found[key] = value
        else:
            raise ApiError(400, f"Unknown fake directive {word!r} (see docs/fake-provider.md).")
    return found


def directive_extract(*, text: str) -> tuple[str, dict[str, int | bool]]:
    """Split a message into the prompt without `[[fake ...]]` blocks and the directives in them."""
    found: dict[str, int | bool] = {}
    for match in _DIRECTIVE_RE.finditer(text):
        found.update(directive_parse(text=match.group(1)))
    return _DIRECTIVE_RE.sub("", text).strip(), found


def _unwrap(text: str) -> str:
    """The words of a header-style directive, with an optional `[[fake ...]]` wrapper removed."""
    return text.strip().removeprefix("[[fake").removesuffix("]]")


def directive_normalize(*, text: str) -> str:
    """Check a server-wide directive and return it as stored: its words, single-spaced.

    Same words as the header (an optional `[[fake ...]]` wrapper is dropped); "" means none.
    Raises ApiError(400) on a bad word.
    """
    words = " ".join(_unwrap(text).split())
    directive_parse(text=words)
    return words


def directive_build(
    *, header: str, message: dict[str, int | bool], server: str = ""
) -> Directive:
    """Merge key by key: the server-wide directive, then the header, then the message (wins)."""
    return Directive(**{**directive_parse(text=server), **directive_parse(text=_unwrap(header)),
                        **message})
