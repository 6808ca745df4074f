"""The Responses API door in process (the production ASGI app) against the real fake provider:
translation both ways, the typed stream, stored responses per tenant, and the same record as chat."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from accounting.models import StoredResponse, Tenant, UsageContent, UsageRecord
from accounting.services import api_key_create, content_retention_enforce, tenant_create
from tests.asgi_client import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


async def post(gateway, body: dict, *, auth: dict | None = None):
    return await ApiClient().post("/v1/responses", json.dumps(body), content_type="application/json",
                                  headers=auth or gateway.auth)


async def get(gateway, path: str, *, auth: dict | None = None, params=None):
    return await ApiClient().get(path, params, headers=auth or gateway.auth)


def events(response) -> list[dict]:
    blocks = [block for block in response.content.decode().split("\n\n") if block.strip()]
    parsed = []
    for block in blocks:
        name, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        parsed.append(event)
    return parsed


async def records() -> list[UsageRecord]:
    return [record async for record in UsageRecord.objects.order_by("created_at")]


@sync_to_async
def keeping_content(gateway) -> None:
    Tenant.objects.filter(pk=gateway.tenant.pk).update(keep_content=True)


@sync_to_async
def other_tenant_auth() -> dict:
    tenant = tenant_create(slug="other", name="Other")
    Tenant.objects.filter(pk=tenant.pk).update(keep_content=True)
    return {"Authorization": f"Bearer {api_key_create(tenant=tenant, name='default')[1]}"}


async def test_a_plain_response_is_openais_response_object_and_recorded_as_responses(gateway):
    response = await post(gateway, {"model": "gpt-4o-mini", "input": "Hello there", "instructions": "Be brief."})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["status"] == "completed"
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["type"] == "output_text" and message["content"][0]["text"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert body["store"] is False  # the tenant keeps no content
    [record] = await records()
    assert record.endpoint == "responses" and record.response_id == body["id"] and record.status == "success"
    assert (record.prompt_tokens, record.completion_tokens) == (usage["input_tokens"], usage["output_tokens"])


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
async def test_the_same_request_as_chat_and_as_responses_records_the_same_tokens_and_cost(gateway, model):
    chat = await ApiClient().post("/v1/chat/completions", json.dumps({
        "model": model, "max_tokens": 50, "messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Tell me about tea"}]}),
        content_type="application/json", headers=gateway.auth)
    responses = await post(gateway, {"model": model, "max_output_tokens": 50, "instructions": "Be brief.",
                                     "input": [{"role": "user", "content": "Tell me about tea"}]})
    assert chat.status_code == responses.status_code == 200
    first, second = await records()
    assert (first.endpoint, second.endpoint) == ("chat.completions", "responses")
    assert (first.prompt_tokens, first.completion_tokens, first.cost_usd) == (
        second.prompt_tokens, second.completion_tokens, second.cost_usd)
    assert second.cost_usd > 0


async def test_a_stream_is_the_typed_event_sequence_with_usage_at_the_end(gateway):
    response = await post(gateway, {"model": "gpt-4o-mini", "input": "Hello there", "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    stream = events(response)
    kinds = [event["type"] for event in stream]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [event["sequence_number"] for event in stream] == list(range(len(stream)))
    text = "".join(event["delta"] for event in stream if event["type"] == "response.output_text.delta")
    done = stream[-1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == text != ""
    [record] = await records()
    assert record.stream and record.endpoint == "responses"
    assert (record.prompt_tokens, record.completion_tokens) == (done["usage"]["input_tokens"],
                                                                done["usage"]["output_tokens"])


async def test_a_function_call_round_trip(gateway):
    first = (await post(gateway, {"model": "gpt-4o-mini", "tools": [WEATHER],
                                  "input": "Weather in Paris? [[fake tool=get_weather]]"})).json()
    [call] = [item for item in first["output"] if item["type"] == "function_call"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"])["city"] and call["call_id"]
    second = await post(gateway, {"model": "gpt-4o-mini", "tools": [WEATHER], "input": [
        {"role": "user", "content": "Weather in Paris?"}, call,
        {"type": "function_call_output", "call_id": call["call_id"], "output": "18 C"}]})
    assert second.status_code == 200, second.text
    assert second.json()["output"][0]["type"] == "message"


async def test_a_streamed_function_call_has_its_argument_events(gateway):
    stream = events(await post(gateway, {"model": "gpt-4o-mini", "tools": [WEATHER], "tool_choice": "required",
                                         "stream": True, "input": "Weather in Paris?"}))
    deltas = "".join(e["delta"] for e in stream if e["type"] == "response.function_call_arguments.delta")
    [done] = [e for e in stream if e["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == deltas and json.loads(deltas)["city"]
    [call] = stream[-1]["response"]["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"


async def test_text_format_json_schema_is_enforced_as_for_chat(gateway):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
              "additionalProperties": False}
    body = (await post(gateway, {"model": "gpt-4o-mini", "input": "A name, please", "text": {
        "format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}}})).json()
    assert "name" in json.loads(body["output"][0]["content"][0]["text"])
    assert body["text"]["format"]["name"] == "person"


@pytest.mark.parametrize("body, param", [
    ({"input": "hi"}, "model"),
    ({"model": "gpt-4o-mini"}, "input"),
    ({"model": "gpt-4o-mini", "input": 3}, "input"),
    ({"model": "gpt-4o-mini", "input": []}, "input"),
    ({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "gpt-4o-mini", "input": [{"type": "function_call_output", "call_id": "c", "output": [3]}]},
     "input[0].output"),
    ({"model": "gpt-4o-mini", "input": [{"role": "user", "content": None}]}, "input[0].content"),
    ({"model": "gpt-4o-mini", "input": "hi", "tools": ["x"]}, "tools[0].type"),
    ({"model": "gpt-4o-mini", "input": "hi", "tool_choice": {"type": "mcp"}}, "tool_choice"),
    ({"model": "gpt-4o-mini", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
     "text.format"),
    ({"model": "gpt-4o-mini", "input": "hi", "background": True}, "background"),
    ({"model": "gpt-4o-mini", "input": "hi", "bogus": 1}, "bogus"),
    ({"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "gpt-4o-mini", "input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "gpt-4o-mini", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"model": "gpt-4o-mini", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "gpt-4o-mini", "input": "hi", "store": True}, "store"),
    ({"model": "gpt-4o-mini", "input": "hi", "previous_response_id": "resp_missing"}, "previous_response_id"),
])
async def test_bad_requests_get_openais_400_naming_the_parameter(gateway, body, param):
    response = await post(gateway, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_stored_responses_continue_list_and_delete_per_tenant(gateway):
    await keeping_content(gateway)
    first = (await post(gateway, {"model": "gpt-4o-mini", "input": "My name is Ada."})).json()
    assert first["store"] is True
    second = await post(gateway, {"model": "gpt-4o-mini", "input": "What is my name?",
                                  "previous_response_id": first["id"]})
    assert second.status_code == 200, second.text
    [_, record] = await records()
    content = await UsageContent.objects.aget(usage_record=record)
    sent = [message["content"] for message in content.messages]
    assert sent[:2] == ["My name is Ada.", first["output"][0]["content"][0]["text"]]

    fetched = await get(gateway, f"/v1/responses/{first['id']}")
    assert fetched.status_code == 200 and fetched.json() == first
    items = (await get(gateway, f"/v1/responses/{second.json()['id']}/input_items")).json()
    assert [item["content"][0]["text"] for item in items["data"]] == ["What is my name?"]
    assert items["object"] == "list" and not items["has_more"]

    other = await other_tenant_auth()
    missing = await get(gateway, "/v1/responses/resp_nothing")
    foreign = await get(gateway, f"/v1/responses/{first['id']}", auth=other)
    assert missing.status_code == foreign.status_code == 404
    assert missing.json()["error"]["type"] == foreign.json()["error"]["type"] == "invalid_request_error"
    assert (await ApiClient().delete(f"/v1/responses/{first['id']}", headers=other)).status_code == 404

    deleted = await ApiClient().delete(f"/v1/responses/{first['id']}", headers=gateway.auth)
    assert deleted.status_code == 200 and deleted.json() == {"id": first["id"], "object": "response", "deleted": True}
    assert (await get(gateway, f"/v1/responses/{first['id']}")).status_code == 404
    assert await StoredResponse.objects.filter(response_id=first["id"]).acount() == 0


async def test_store_false_keeps_nothing(gateway):
    await keeping_content(gateway)
    body = (await post(gateway, {"model": "gpt-4o-mini", "input": "hi", "store": False})).json()
    assert body["store"] is False
    assert (await get(gateway, f"/v1/responses/{body['id']}")).status_code == 404


async def test_stored_responses_follow_the_tenants_content_retention(gateway):
    await keeping_content(gateway)
    body = (await post(gateway, {"model": "gpt-4o-mini", "input": "hi"})).json()
    assert (await get(gateway, f"/v1/responses/{body['id']}")).status_code == 200
    # Older than the retention (30 days): not found even before the hourly deletion, then deleted.
    await StoredResponse.objects.filter(response_id=body["id"]).aupdate(created_at=timezone.now() - timedelta(days=31))
    assert (await get(gateway, f"/v1/responses/{body['id']}")).status_code == 404
    await sync_to_async(content_retention_enforce)()
    assert await StoredResponse.objects.filter(response_id=body["id"]).acount() == 0


async def test_feedback_names_a_response_by_its_id(gateway):
    body = (await post(gateway, {"model": "gpt-4o-mini", "input": "hi"})).json()
    sent = await ApiClient().post("/v1/feedback", json.dumps({"response_id": body["id"], "rating": "up"}),
                                  content_type="application/json", headers=gateway.auth)
    assert sent.status_code == 201, sent.text


async def test_a_stream_cut_mid_way_ends_with_response_failed_and_stores_nothing(gateway):
    await keeping_content(gateway)
    stream = events(await post(gateway, {"model": "gpt-4o-mini", "stream": True,
                                         "input": "Hello [[fake disconnect_after=3 chunks=10]]"}))
    failed = stream[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "connection" and failed["response"]["error"]["message"]
    assert "response.completed" not in [event["type"] for event in stream]
    [record] = await records()
    assert record.status == "error" and record.endpoint == "responses"
    assert await StoredResponse.objects.acount() == 0


async def test_a_provider_failing_before_the_first_token_is_a_plain_http_error(gateway):
    response = await post(gateway, {"model": "gpt-4o-mini", "stream": True, "input": "Hello [[fake status=400]]"})
    assert response.status_code == 400 and response.json()["error"]["message"]


async def test_a_stored_response_is_synchronous_so_cancelling_it_is_openais_400(gateway):
    await keeping_content(gateway)
    created = (await post(gateway, {"model": "gpt-4o-mini", "input": "Hello"})).json()
    cancel = f"/v1/responses/{created['id']}/cancel"
    refused = await ApiClient().post(cancel, "", content_type="application/json", headers=gateway.auth)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "Cannot cancel a synchronous response."
    other = await other_tenant_auth()
    foreign = await ApiClient().post(cancel, "", content_type="application/json", headers=other)
    missing = await ApiClient().post("/v1/responses/resp_nothing/cancel", "", content_type="application/json",
                                     headers=gateway.auth)
    assert foreign.status_code == missing.status_code == 404
    assert (await get(gateway, f"/v1/responses/{created['id']}")).json() == created  # still there


@pytest.mark.parametrize(("model", "source"), [("gpt-4o-mini", "estimate"), ("claude-haiku-4-5", "provider")])
async def test_input_tokens_counts_a_responses_body_as_the_response_bills_it(gateway, model, source):
    await keeping_content(gateway)
    body = {"model": model, "input": "Count these words, please.", "instructions": "Be brief.", "tools": [WEATHER]}
    counted = await ApiClient().post("/v1/responses/input_tokens", json.dumps(body), content_type="application/json",
                                     headers=gateway.auth)
    assert counted.status_code == 200, counted.content
    assert counted.json()["object"] == "response.input_tokens" and counted.headers["x-gateway-token-count"] == source
    answered = (await post(gateway, body)).json()
    if source == "provider":  # the provider's own counter: exactly what the response is billed for
        assert counted.json()["input_tokens"] == answered["usage"]["input_tokens"]
    else:
        assert counted.json()["input_tokens"] > 0
    async def count(body: dict) -> int:
        answer = await ApiClient().post("/v1/responses/input_tokens", json.dumps(body),
                                        content_type="application/json", headers=gateway.auth)
        return answer.json()["input_tokens"]

    alone = await count({"model": model, "input": "And now?"})
    assert await count({"model": model, "input": "And now?", "previous_response_id": answered["id"]}) > alone
    assert [r.endpoint for r in await records()] == ["responses"]  # counting is never recorded


async def test_input_tokens_refuses_a_bad_body_as_responses_does(gateway):
    refused = await ApiClient().post("/v1/responses/input_tokens", json.dumps({"model": "gpt-4o-mini"}),
                                     content_type="application/json", headers=gateway.auth)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input"
