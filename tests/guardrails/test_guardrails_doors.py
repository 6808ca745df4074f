"""Guardrails through the other doors on the same pipeline: the WebSocket and the Anthropic API."""

from __future__ import annotations

import anthropic
import pytest
from channels.testing import WebsocketCommunicator

from gateway_site.asgi import application
from guardrails.models import GuardrailEvent, GuardrailPolicy, GuardrailRule
from tests.guardrails.test_guardrails_api import CARD, EMAIL, events, record_wait

pytestmark = pytest.mark.django_db(transaction=True)


async def policy(**rule) -> None:
    created = await GuardrailPolicy.objects.acreate()
    await GuardrailRule.objects.acreate(policy=created, **rule)


async def test_websocket_stream_blocked_mid_way_gets_an_error_event(gateway):
    await policy(kind="pii_card", direction="output", action="block")
    socket = WebsocketCommunicator(application, "/v1/ws/chat", headers=[(b"authorization", f"Bearer {gateway.raw_key}".encode())])
    assert (await socket.connect())[0]
    assert (await socket.receive_json_from(timeout=10))["type"] == "auth.ok"
    lead = "A sentence long enough to be sent before the card arrives, and then some more words. "
    await socket.send_json_to({"type": "chat.request", "id": "r1", "model": "gpt-4o-mini",
                               "messages": [{"role": "user", "content": f"[[fake echo]] {lead}Card {CARD} end."}]})
    seen = []
    while (event := await socket.receive_json_from(timeout=10))["type"] != "error":
        seen.append(event)
    assert event["id"] == "r1" and event["error"]["code"] == "guardrail_blocked"
    text = "".join(e["content"] for e in seen if e["type"] == "chat.delta")
    assert text and lead.startswith(text) and "4111" not in text
    await socket.disconnect()
    record = await record_wait()
    assert record.error_class == "guardrail_blocked" and record.stream
    assert [(e.kind, e.action) for e in await events(at_least=1)] == [("pii_card", "block")]


@pytest.fixture
async def anthropic_client(gateway):
    # anthropic-python 2.x runs on httpx2 (httpx's successor), which has the same ASGI transport.
    import httpx2

    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=application), base_url="http://testserver")
    yield anthropic.AsyncAnthropic(base_url="http://testserver", api_key=gateway.raw_key, http_client=http, max_retries=0)
    await http.aclose()


async def test_anthropic_api_blocks_the_prompt_in_its_own_error_shape(anthropic_client):
    await policy(kind="pii_email", direction="input", action="block")
    with pytest.raises(anthropic.BadRequestError) as caught:
        await anthropic_client.messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": f"mail {EMAIL}"}])
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "pii_email" in caught.value.body["error"]["message"]
    assert await GuardrailEvent.objects.acount() == 1


async def test_anthropic_api_streams_a_redacted_answer(anthropic_client):
    await policy(kind="pii_email", direction="output", action="redact")
    async with anthropic_client.messages.stream(
        model="claude-haiku-4-5", max_tokens=200,
        messages=[{"role": "user", "content": f"[[fake echo]] Send it to {EMAIL} please."}],
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
    assert text == "Send it to [REDACTED:EMAIL] please."
