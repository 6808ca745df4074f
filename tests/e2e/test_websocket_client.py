"""A real WebSocket client (the `websockets` package) against the gateway under uvicorn."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

pytestmark = pytest.mark.e2e


async def _events_until_done(socket, request_id: str) -> list[dict]:
    events = []
    while True:
        event = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
        events.append(event)
        if event.get("id") == request_id and event["type"] in ("chat.done", "error"):
            return events


def test_streamed_chat_over_a_real_socket(stack):
    async def run() -> list[dict]:
        url = stack.base_url.replace("http://", "ws://") + "/v1/ws/chat"
        async with connect(url, additional_headers={"Authorization": f"Bearer {stack.api_key}"}) as socket:
            assert json.loads(await socket.recv())["type"] == "auth.ok"
            await socket.send(json.dumps({
                "type": "chat.request", "id": "1", "model": "claude-haiku-4-5",
                "messages": [{"role": "user", "content": "[[fake chunks=20]] hello"}],
            }))
            return await _events_until_done(socket, "1")

    events = asyncio.run(run())
    deltas = [e for e in events if e["type"] == "chat.delta" and e["content"]]
    done = events[-1]
    assert done["type"] == "chat.done" and len(deltas) >= 10
    assert done["usage"]["completion_tokens"] > 0 and float(done["cost_usd"]) > 0
    rows = stack.wait_for_rows(
        "SELECT status, stream FROM accounting_usagerecord WHERE response_id = %s", (done["response_id"],), 1
    )
    assert rows == [("success", True)]


def test_auth_message_over_a_real_socket_and_bad_key_closes(stack):
    async def run() -> tuple[dict, int | None]:
        url = stack.base_url.replace("http://", "ws://") + "/v1/ws/chat"
        async with connect(url) as socket:
            await socket.send(json.dumps({"type": "auth", "api_key": "sk-gw-not-a-key"}))
            event = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
            await asyncio.wait_for(socket.wait_closed(), timeout=10)
            return event, socket.close_code

    event, code = asyncio.run(run())
    assert event["type"] == "error" and event["status"] == 401
    assert code == 4401
