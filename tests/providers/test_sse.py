"""providers.sse: Server-Sent Events decoded from body bytes, however the network splits them."""

from __future__ import annotations

import pytest

from providers.sse import SSEDecoder, SSEEvent

BODY = (
    ": a comment\n"
    "data: {\"a\": 1}\n"
    "\n"
    "event: message_start\r\n"
    "data: first line\r\n"
    "data:second line, no space\r\n"
    "\r\n"
    "id: 7\r"
    "data: é ✓ after a lone CR\r"
    "\r"
    "event: ping\n"
    "\n"  # an event with no data is dropped
    "data: [DONE]\n"
    "\n"
    "data: cut off, never dispatched\n"
).encode()

EXPECTED = [
    SSEEvent("message", '{"a": 1}'),
    SSEEvent("message_start", "first line\nsecond line, no space"),
    SSEEvent("message", "é ✓ after a lone CR"),
    SSEEvent("message", "[DONE]"),
]


def decode(pieces: list[bytes]) -> list[SSEEvent]:
    decoder, events = SSEDecoder(), []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.end()


def test_a_body_in_one_piece():
    assert decode([BODY]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16])
def test_any_split_of_the_body_gives_the_same_events(size):
    assert decode([BODY[i:i + size] for i in range(0, len(BODY), size)]) == EXPECTED


def test_every_single_cut_gives_the_same_events():
    # CRLF cut between its CR and LF, a UTF-8 character cut in two: still the same events.
    for cut in range(len(BODY) + 1):
        assert decode([BODY[:cut], BODY[cut:]]) == EXPECTED, cut


def test_a_last_blank_line_ended_by_a_lone_cr_dispatches():
    assert decode([b"data: x\r", b"\r"]) == [SSEEvent("message", "x")]


def test_malformed_utf8_becomes_a_replacement_character():
    assert decode([b"data: \xff\n\n"]) == [SSEEvent("message", "\ufffd")]


def test_only_the_exact_field_names_count():
    body = b"datum: no\ndata\nevents: no\nevent\ndata:x\n\n"
    assert decode([body]) == [SSEEvent("message", "\nx")]
