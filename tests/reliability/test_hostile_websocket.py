"""Hostile input on the WebSocket `/v1/ws/chat` of a real gateway process (issue 10): malformed,
binary, deeply nested and oversized frames, floods of requests and of pings. Each bad frame gets an
`error` event and the socket keeps serving; a frame over daphne's message limit closes the socket
with 1009; a flood never has more than 8 requests in flight per socket, every request gets exactly
one final event, and the process's memory stays bounded. Figures go to docs/reliability.md."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.reliability.hostile_stack import MAX_BODY_BYTES, wait_for

pytestmark = pytest.mark.e2e

SLOW = "[[fake chunk_delay_ms=40 chunks=8]] Hi"


@contextmanager
def open_socket(stack):
    with connect(stack.ws_url, additional_headers={"Authorization": f"Bearer {stack.api_key}"},
                 max_size=None, open_timeout=20) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "auth.ok"
        yield ws


def recv(ws, timeout: float = 10.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def assert_error_event(event: dict, status: int = 400) -> None:
    assert event["type"] == "error" and event["status"] == status, event
    assert set(event["error"]) == {"message", "type", "param", "code"} and event["error"]["message"]


def assert_still_serving(ws) -> None:
    ws.send(json.dumps({"type": "ping"}))
    assert recv(ws)["type"] == "pong"


@pytest.mark.parametrize("frame", [
    "{", "not json", "[]", "42", "null", '{"no_type": 1}', '{"type": 7}', '{"type": "warp"}',
    '{"type": "chat.cancel", "id": [1, 2]}', '{"type": "chat.cancel", "id": {"a": 1}}',
    '{"type": "chat.request", "id": ["x"], "model": "gpt-4o-mini", "messages": []}',
    '{"type": "chat.request", "id": "' + "i" * 200 + '"}',
    '{"type": "chat.request", "id": "a", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],'
    ' "max_tokens": 1000000000000}',
    '{"type": "chat.request", "id": "b", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],'
    ' "temperature": NaN}',
    '{"type": "chat.request", "id": "c", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],'
    ' "tempreature": 1}',
    '{"type": "chat.request", "id": "d", "model": "gpt-4o-mini", "messages": [{"role": ["user"], "content": "Hi"}]}',
    '{"type": "warp", "id": ' + "[" * 900 + "]" * 900 + "}",
    '{"type": "chat.request", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_a_bad_text_frame_gets_an_error_event_and_the_socket_keeps_serving(hostile_stack, frame):
    with open_socket(hostile_stack) as ws:
        ws.send(frame)
        assert_error_event(recv(ws))
        assert_still_serving(ws)


def test_a_binary_frame_gets_an_error_event(hostile_stack):
    with open_socket(hostile_stack) as ws:
        ws.send(b"\x00\xff" * 100)
        assert_error_event(recv(ws))
        assert_still_serving(ws)


def test_a_frame_over_the_body_limit_gets_an_error_event(hostile_stack):
    with open_socket(hostile_stack) as ws:
        ws.send(json.dumps({"type": "ping", "pad": "p" * (MAX_BODY_BYTES + 1)}))
        assert_error_event(recv(ws))
        assert_still_serving(ws)


def test_a_frame_over_daphnes_message_limit_closes_the_socket_with_1009(hostile_stack):
    """autobahn refuses the frame from its header, so the client may still be writing when the
    server closes: it sees the 1009 close frame, or a broken pipe; never an answer."""
    with open_socket(hostile_stack) as ws:
        with pytest.raises((ConnectionClosed, OSError)):
            ws.send("x" * (4 * 1024 * 1024))
            while True:
                ws.recv(timeout=10)
        if ws.protocol.close_rcvd is not None:
            assert ws.protocol.close_rcvd.code == 1009
    assert hostile_stack.alive()


def test_a_flood_of_requests_is_bounded_at_8_in_flight(hostile_stack):
    """200 requests sent at once on one socket: 8 are served, the rest are refused at once with
    `too_many_requests`; each id gets exactly one final event; memory stays bounded."""
    before_rss = hostile_stack.rss_kib()
    before_records = hostile_stack.query("SELECT count(*) FROM accounting_usagerecord")[0][0]
    finals: dict[str, dict] = {}
    with open_socket(hostile_stack) as ws:
        for i in range(200):
            ws.send(json.dumps({"type": "chat.request", "id": f"r{i}", "model": "gpt-4o-mini",
                                "messages": [{"role": "user", "content": SLOW}]}))
        deadline = time.monotonic() + 45
        while len(finals) < 200 and time.monotonic() < deadline:
            event = recv(ws, timeout=30)
            if event["type"] in ("chat.done", "error"):
                assert event["id"] not in finals, f"two final events for {event['id']}"
                finals[event["id"]] = event
        peak_rss = hostile_stack.rss_kib()
    done = [e for e in finals.values() if e["type"] == "chat.done"]
    refused = [e for e in finals.values() if e["type"] == "error"]
    assert len(finals) == 200
    assert 8 <= len(done) < 200
    assert all(e["error"]["code"] == "too_many_requests" and e["status"] == 400 for e in refused)
    records = wait_for(lambda: hostile_stack.query("SELECT count(*) FROM accounting_usagerecord")[0][0]
                       - before_records >= len(done))
    assert records, "a served request has no usage record"
    growth = peak_rss - before_rss
    print(f"\nWS request flood: 200 sent, {len(done)} served, {len(refused)} refused; RSS +{growth} KiB")
    assert growth < 64 * 1024


def test_a_flood_of_pings_and_garbage_keeps_memory_bounded(hostile_stack):
    """20 000 frames (pings and malformed JSON) as fast as the client can write, read back
    afterwards: the server answers each, and its memory grows by a bounded amount."""
    before = hostile_stack.rss_kib()
    with open_socket(hostile_stack) as ws:
        for i in range(10_000):
            ws.send('{"type": "ping"}')
            ws.send("{broken")
        answers = 0
        while answers < 20_000:
            recv(ws)
            answers += 1
        peak = hostile_stack.rss_kib()
        assert_still_serving(ws)
    growth = peak - before
    print(f"\nWS ping/garbage flood: 20000 frames answered; RSS +{growth} KiB")
    assert growth < 64 * 1024
    assert hostile_stack.alive()
