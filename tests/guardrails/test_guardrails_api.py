"""Guardrails on the request path: the OpenAI API in process against the real fake provider.

The fake's `[[fake echo]]` directive answers with the prompt itself in 5-character pieces, so an
answer (and a stream) can carry PII split across chunks.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from django.core.exceptions import ValidationError
from tests.asgi_client import ApiClient

from accounting.models import UsageRecord
from accounting.services import api_key_create, tenant_create
from guardrails.models import GuardrailEvent, GuardrailPolicy, GuardrailRule

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"


def chat_body(content: str, **extra) -> str:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra})


async def post(raw_key: str, body: str, path: str = "/v1/chat/completions"):
    return await ApiClient().post(path, body, content_type="application/json",
                                    headers={"Authorization": f"Bearer {raw_key}"})


async def policy(*rules: dict, tenant=None, inherit_default: bool = True) -> GuardrailPolicy:
    created = await GuardrailPolicy.objects.acreate(tenant=tenant, inherit_default=inherit_default)
    for rule in rules:
        await GuardrailRule.objects.acreate(policy=created, **rule)
    return created


async def sse(response) -> list[str]:
    raw = response.content.decode()
    return [block[len("data: "):] for block in raw.split("\n\n") if block.startswith("data: ")]


def streamed_text(events: list[str]) -> str:
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))


async def upstream_calls(fake_provider_url: str) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{fake_provider_url}/_fake/stats")).json()["requests"]


async def record_wait() -> UsageRecord:
    """The request's UsageRecord, polled for: a stream that ended with an error event is recorded
    when its generator closes, which may come a moment after the client read the last event."""
    deadline = time.monotonic() + 10
    while (record := await UsageRecord.objects.afirst()) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert record is not None
    return record


async def events(at_least: int = 0) -> list[GuardrailEvent]:
    deadline = time.monotonic() + 10
    while True:
        found = [e async for e in GuardrailEvent.objects.order_by("pk")]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


def no_pii_in(event: GuardrailEvent, *secrets: str) -> bool:
    fields = f"{event.snippet} {event.location} {event.response_id}"
    return not any(secret in fields or secret.replace(" ", "") in fields for secret in secrets)


# --- input ----------------------------------------------------------------------------------------
async def test_an_email_in_the_prompt_is_blocked_with_a_400_recorded_and_never_sent(gateway, fake_provider_url):
    await policy({"kind": "pii_email", "direction": "input", "action": "block"})
    before = await upstream_calls(fake_provider_url)
    response = await post(gateway.raw_key, chat_body(f"Write to {EMAIL} about the order"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "guardrail_blocked" and error["param"] == "messages"
    assert "pii_email" in error["message"] and EMAIL not in error["message"]
    assert await upstream_calls(fake_provider_url) == before
    record = await UsageRecord.objects.aget()
    assert (record.status, record.http_status, record.error_class) == ("error", 400, "guardrail_blocked")
    assert record.cost_usd == 0
    [event] = await events()
    assert (event.kind, event.action, event.direction) == ("pii_email", "block", "input")
    assert event.request_id == record.request_id and event.tenant_id == gateway.tenant.pk
    assert event.location == "messages[0].content" and (event.start, event.end) == (9, 9 + len(EMAIL))
    assert event.snippet == "xxxx.xxx@xxxxxxx.xxx" and no_pii_in(event, EMAIL)


async def test_redact_sends_the_redacted_prompt_upstream(gateway):
    plain = await post(gateway.raw_key, chat_body("Tell [REDACTED:EMAIL] the news"))
    await policy({"kind": "pii_email", "direction": "input", "action": "redact"})
    guarded = await post(gateway.raw_key, chat_body(f"Tell {EMAIL} the news"))
    assert guarded.status_code == 200
    # The fake's answer is a hash of the prompt it received: the same answer proves the same prompt.
    assert guarded.json()["choices"][0]["message"]["content"] == plain.json()["choices"][0]["message"]["content"]
    echoed = await post(gateway.raw_key, chat_body(f"[[fake echo]] Tell {EMAIL} the news"))
    assert echoed.json()["choices"][0]["message"]["content"] == "Tell [REDACTED:EMAIL] the news"
    kinds = [(e.kind, e.action, e.direction) for e in await events()]
    assert kinds == [("pii_email", "redact", "input")] * 2


async def test_flag_passes_the_prompt_unchanged_and_records_an_event(gateway):
    await policy({"kind": "pii_card", "direction": "both", "action": "flag"})
    response = await post(gateway.raw_key, chat_body(f"[[fake echo]] my card is {CARD}"))
    assert response.json()["choices"][0]["message"]["content"] == f"my card is {CARD}"
    flagged = await events()
    assert [(e.kind, e.action, e.direction) for e in flagged] == [("pii_card", "flag", "input"), ("pii_card", "flag", "output")]
    record = await UsageRecord.objects.aget()
    assert {e.response_id for e in flagged} == {record.response_id} and record.status == "success"
    assert all(no_pii_in(e, CARD) for e in flagged) and flagged[0].snippet == "9999 9999 9999 9999"


async def test_the_strongest_action_wins_and_text_parts_are_checked(gateway):
    await policy({"kind": "pii_phone", "direction": "input", "action": "flag"},
                 {"kind": "pii_phone", "direction": "input", "action": "block", "label": "no phones"})
    body = json.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "call +44 20 7946 0958"}]},
    ]})
    response = await post(gateway.raw_key, body)
    assert response.status_code == 400
    assert "'no phones' (pii_phone)" in response.json()["error"]["message"]
    [event] = await events()
    assert event.location == "messages[1].content[0].text" and event.action == "block"


async def test_blocked_patterns_are_validated_on_save_and_enforced(gateway):
    created = await GuardrailPolicy.objects.acreate()
    for bad in ("(unclosed", "a*", ""):
        with pytest.raises(ValidationError):
            await GuardrailRule.objects.acreate(policy=created, kind="blocked_pattern", pattern=bad)
    await GuardrailRule.objects.acreate(policy=created, kind="blocked_pattern", pattern=r"(?i)\bproject\s+falcon\b",
                                        direction="input", action="block", label="codename")
    response = await post(gateway.raw_key, chat_body("What is Project  FALCON?"))
    assert response.status_code == 400 and "codename" in response.json()["error"]["message"]
    assert (await post(gateway.raw_key, chat_body("What is a falcon project?"))).status_code == 200


async def test_maximum_prompt_size_in_tokens_blocks_and_in_characters_flags(gateway):
    await policy({"kind": "max_prompt_tokens", "direction": "input", "action": "block", "limit": 20},
                 {"kind": "max_prompt_chars", "direction": "input", "action": "flag", "limit": 30})
    assert (await post(gateway.raw_key, chat_body("A short question, about 40 characters."))).status_code == 200
    response = await post(gateway.raw_key, chat_body("word " * 50))
    assert response.status_code == 400
    assert "more than the 20 allowed" in response.json()["error"]["message"]
    snippets = [(e.kind, e.action, e.snippet) for e in await events()]
    assert snippets[0] == ("max_prompt_chars", "flag", "38 characters > 30")
    assert snippets[-1][0:2] == ("max_prompt_tokens", "block") and snippets[-1][2].endswith("tokens > 20")


async def test_size_rules_cannot_redact_or_check_output(gateway):
    created = await GuardrailPolicy.objects.acreate()
    for rule in ({"action": "redact", "direction": "input"}, {"action": "block", "direction": "both"}):
        with pytest.raises(ValidationError):
            await GuardrailRule.objects.acreate(policy=created, kind="max_prompt_chars", limit=10, **rule)


async def test_embeddings_input_is_checked_too(gateway):
    await policy({"kind": "pii_iban", "direction": "input", "action": "block"})
    body = json.dumps({"model": "text-embedding-3-small", "input": ["fine", "IBAN GB82 WEST 1234 5698 7654 32"]})
    response = await post(gateway.raw_key, body, path="/v1/embeddings")
    assert response.status_code == 400 and response.json()["error"]["code"] == "guardrail_blocked"
    [event] = await events()
    assert event.location == "input[1]" and event.response_id == ""


# --- output ---------------------------------------------------------------------------------------
async def test_an_answer_is_redacted_before_it_leaves(gateway):
    await policy({"kind": "pii_email", "direction": "output", "action": "redact"})
    response = await post(gateway.raw_key, chat_body(f"[[fake echo]] reach {EMAIL} today"))
    assert response.json()["choices"][0]["message"]["content"] == "reach [REDACTED:EMAIL] today"
    [event] = await events()
    assert (event.direction, event.location) == ("output", "choices[0].message.content")


async def test_a_blocked_answer_is_an_error_but_still_billed(gateway):
    await policy({"kind": "pii_card", "direction": "output", "action": "block"})
    response = await post(gateway.raw_key, chat_body(f"[[fake echo]] card {CARD}"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "guardrail_blocked"
    assert "the answer contains a payment card number" in response.json()["error"]["message"]
    record = await UsageRecord.objects.aget()
    assert record.error_class == "guardrail_blocked" and record.cost_usd > 0 and record.completion_tokens > 0


# --- streams --------------------------------------------------------------------------------------
async def test_a_stream_is_redacted_even_when_the_match_is_split_across_chunks(gateway):
    await policy({"kind": "pii_email", "direction": "output", "action": "redact"})
    prompt = f"Please forward this to {EMAIL} and also to john@example.org before noon, thanks a lot."
    response = await post(gateway.raw_key, chat_body(f"[[fake echo]] {prompt}", stream=True))
    events_ = await sse(response)
    assert events_[-1] == "[DONE]"
    raw = "".join(events_)
    assert EMAIL not in raw and "example" not in raw  # no piece of an address was sent
    expected = "Please forward this to [REDACTED:EMAIL] and also to [REDACTED:EMAIL] before noon, thanks a lot."
    assert streamed_text(events_) == expected
    found = await events()
    assert [(e.start, e.end) for e in found] == [(23, 23 + len(EMAIL)), (prompt.index("john"), prompt.index(" before"))]
    record = await UsageRecord.objects.aget()
    assert record.status == "success" and record.stream


async def test_a_block_mid_stream_ends_it_with_an_error_event(gateway):
    await policy({"kind": "pii_card", "direction": "output", "action": "block"})
    lead = "The quick brown fox jumps over the lazy dog and keeps running through the field. "
    prompt = f"{lead}Now the card: {CARD} and more text after it."
    response = await post(gateway.raw_key, chat_body(f"[[fake echo]] {prompt}", stream=True))
    events_ = await sse(response)
    assert "[DONE]" not in events_
    error = json.loads(events_[-1])["error"]
    assert error["code"] == "guardrail_blocked" and "pii_card" in error["message"]
    sent = streamed_text(events_[:-1])
    assert sent and lead.startswith(sent) and "4111" not in "".join(events_)
    record = await record_wait()
    assert (record.status, record.error_class, record.http_status) == ("error", "guardrail_blocked", 400)
    assert record.stream and record.completion_tokens > 0 and record.cost_usd > 0  # what was streamed
    [event] = await events(at_least=1)
    assert (event.action, event.direction, event.start) == ("block", "output", prompt.index(CARD))


async def test_a_stream_with_a_json_schema_is_validated_at_the_end(gateway):
    person = {"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]}}}
    await policy({"kind": "pii_email", "direction": "output", "action": "redact"})
    ok = await sse(await post(gateway.raw_key, chat_body("Who?", stream=True, response_format=person)))
    assert ok[-1] == "[DONE]" and json.loads(streamed_text(ok))
    bad = await sse(await post(gateway.raw_key, chat_body("[[fake bad_json]] Who?", stream=True, response_format=person)))
    assert json.loads(bad[-1])["error"]["code"] == "structured_output_invalid"


# --- policies -------------------------------------------------------------------------------------
async def test_a_tenant_policy_adds_to_or_replaces_the_default(gateway):
    await policy({"kind": "pii_email", "direction": "input", "action": "block"})
    other = await tenant_create_async("globex")
    _, other_key = await api_key_create_async(other)
    await policy({"kind": "pii_card", "direction": "input", "action": "block"}, tenant=gateway.tenant)
    assert (await post(gateway.raw_key, chat_body(f"mail {EMAIL}"))).status_code == 400  # default inherited
    assert (await post(gateway.raw_key, chat_body(f"card {CARD}"))).status_code == 400  # its own
    assert (await post(other_key, chat_body(f"card {CARD}"))).status_code == 200  # not another tenant's
    assert (await post(other_key, chat_body(f"mail {EMAIL}"))).status_code == 400
    async for own in GuardrailPolicy.objects.filter(tenant=gateway.tenant):
        own.inherit_default = False
        await own.asave(update_fields=["inherit_default"])  # as the admin does: the rules reload
    assert (await post(gateway.raw_key, chat_body(f"mail {EMAIL}"))).status_code == 200
    tenants = {e.tenant_id for e in await events()}
    assert tenants == {gateway.tenant.pk, other.pk}


async def test_a_saved_rule_applies_at_once_despite_the_cache(gateway, settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 3600
    assert (await post(gateway.raw_key, chat_body(f"mail {EMAIL}"))).status_code == 200
    created = await policy()
    assert (await post(gateway.raw_key, chat_body(f"mail {EMAIL}"))).status_code == 200
    await GuardrailRule.objects.acreate(policy=created, kind="pii_email", direction="input", action="block")
    assert (await post(gateway.raw_key, chat_body(f"mail {EMAIL}"))).status_code == 400
    created.enabled = False
    await created.asave()
    assert (await post(gateway.raw_key, chat_body(f"mail {EMAIL}"))).status_code == 200


async def tenant_create_async(slug: str):
    from asgiref.sync import sync_to_async

    return await sync_to_async(tenant_create)(slug=slug, name=slug)


async def api_key_create_async(tenant):
    from asgiref.sync import sync_to_async

    return await sync_to_async(api_key_create)(tenant=tenant, name="k")


# --- the official SDK ------------------------------------------------------------------------------
@pytest.fixture
async def openai_client(gateway):
    from gateway_site.asgi import application

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver")
    yield openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=gateway.raw_key, http_client=http, max_retries=0)
    await http.aclose()


async def test_the_openai_sdk_sees_a_bad_request_naming_the_rule(openai_client):
    await policy({"kind": "pii_national_id", "direction": "input", "action": "block"})
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "my SSN is 123-45-6789"}])
    assert caught.value.code == "guardrail_blocked" and "pii_national_id" in caught.value.message


async def test_the_openai_sdk_streams_a_redacted_answer(openai_client):
    await policy({"kind": "pii_iban", "direction": "output", "action": "redact"})
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "[[fake echo]] Wire it to DE89 3704 0044 0532 0130 00 by Friday."}])
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == "Wire it to [REDACTED:IBAN] by Friday." and usage.completion_tokens > 0


# --- the response cache ----------------------------------------------------------------------------
async def test_a_cached_answer_is_checked_against_the_rules_in_force(gateway):
    body = chat_body(f"[[fake echo]] mail {EMAIL}", temperature=0)
    first = await post(gateway.raw_key, body)
    assert first.headers["x-gateway-cache"] == "miss" and EMAIL in first.json()["choices"][0]["message"]["content"]
    await policy({"kind": "pii_email", "direction": "output", "action": "redact"})
    for stream in (False, True):
        again = await post(gateway.raw_key, chat_body(f"[[fake echo]] mail {EMAIL}", temperature=0, stream=stream))
        assert again.headers["x-gateway-cache"] == "hit"
        text = streamed_text(await sse(again)) if stream else again.json()["choices"][0]["message"]["content"]
        assert text == "mail [REDACTED:EMAIL]"
