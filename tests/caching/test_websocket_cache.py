"""The WebSocket chat answered from the cache: the replay arrives as the same delta events."""

from __future__ import annotations

import pytest

from accounting.models import UsageRecord
from tests.routing.test_websocket import connect, receive, request, until

pytestmark = pytest.mark.django_db(transaction=True)


async def test_websocket_request_is_replayed_from_the_cache(gateway):
    socket = connect(gateway)
    assert (await socket.connect())[0]
    await receive(socket)  # auth.ok
    replies = []
    for request_id in ("first", "second"):
        await socket.send_json_to(request(request_id, "Cache me over the socket", temperature=0))
        done, before = await until(socket, "chat.done", request_id)
        replies.append((done, "".join(e["content"] for e in before if e["type"] == "chat.delta")))
    await socket.disconnect()
    (first, first_text), (second, second_text) = replies
    assert first_text and first_text == second_text
    assert second["provider"] is None and second["usage"] == first["usage"]
    miss = await UsageRecord.objects.aget(response_id=first["response_id"])
    hit = await UsageRecord.objects.aget(response_id=second["response_id"])
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert hit.cost_usd == 0 and hit.saved_cost_usd == miss.cost_usd > 0 and hit.stream
