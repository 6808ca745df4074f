"""Server-Sent Events, decoded from the bytes of a response body as they arrive.

https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation:
lines end with CRLF, LF or CR; a line starting with ":" is a comment; `event:` names the event,
`data:` lines are joined with newlines; a blank line dispatches the event (one with no data is
dropped); an event not closed by a blank line when the stream ends was cut off and is dropped.
The body is UTF-8 (the spec's only encoding); a malformed byte becomes U+FFFD.

Decoding bytes directly, rather than through a text decoder and then a line decoder, saves two
layers of Python per network read on every stream (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str
    data: str


class SSEDecoder:
    """`feed` the body's bytes in any pieces; each call returns the events its bytes completed."""

    def __init__(self) -> None:
        self._tail = b""  # an unfinished line, and a CR that may be the first half of a CRLF
        self._event = ""
        self._data: list[str] = []

    def feed(self, piece: bytes) -> list[SSEEvent]:
        text = self._tail + piece if self._tail else piece
        held = b""
        if text.endswith(b"\r"):
            text, held = text[:-1], b"\r"
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, tail = text.split(b"\n")
        self._tail = tail + held
        return self._lines(lines)

    def end(self) -> list[SSEEvent]:
        """The stream ended: a last line ended by a lone CR still counts."""
        tail, self._tail = self._tail, b""
        return self._lines([tail[:-1]]) if tail.endswith(b"\r") else []

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for line in lines:
            if not line:  # a blank line dispatches
                if self._data:
                    events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
            elif line.startswith(b"data"):
                value = _value(line, 4)
                if value is not None:
                    self._data.append(value)
            elif line.startswith(b"event"):
                value = _value(line, 5)
                if value is not None:
                    self._event = value
            # anything else: a comment (":..."), `id`, `retry` or an unknown field, all ignored
        return events


def _value(line: bytes, name_length: int) -> str | None:
    """The value of a `name: value` line whose name is the first `name_length` bytes, or None
    when the name only starts that way (`datum: ...`)."""
    if len(line) == name_length:
        return ""
    if line[name_length] != 0x3A:  # ":"
        return None
    start = name_length + 2 if line[name_length + 1:name_length + 2] == b" " else name_length + 1
    return line[start:].decode("utf-8", "replace")
