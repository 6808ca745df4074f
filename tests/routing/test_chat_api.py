"""The OpenAI-compatible API in process (Django's async client) against the real fake provider."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from tests.asgi_client import ApiClient
from django.utils import timezone

from accounting.models import UsageRecord
from accounting.services import api_key_create, api_key_revoke
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert
from tests.conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def chat_body(content: str = "Hello there", **extra) -> str:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra})


async def post(gateway, path: str, body: str | bytes, **headers):
    client = ApiClient()
    return await client.post(
        path, body, content_type="application/json", headers={**gateway.auth, **headers}
    )


async def records() -> list[UsageRecord]:
    return [record async for record in UsageRecord.objects.order_by("created_at")]


async def sse_events(response) -> list[str]:
    raw = response.content.decode()
    return [block[len("data: "):] for block in raw.split("\n\n") if block.startswith("data: ")]


# --- success paths ------------------------------------------------------------------------------
async def test_chat_completion_returns_openai_body_with_gateway_id_and_records_usage(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body())
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"]
    assert body["id"].startswith("chatcmpl-")
    assert response.headers["x-gateway-provider"] == "fake"
    assert response.headers["x-gateway-model"] == "gpt-4o-mini-2024-07-18"
    [record] = await records()
    assert record.response_id == body["id"]
    assert str(record.request_id) == response.headers["x-request-id"]
    assert record.status == "success" and record.http_status == 200
    assert record.prompt_tokens == body["usage"]["prompt_tokens"] > 0
    assert record.completion_tokens == body["usage"]["completion_tokens"] > 0
    assert not record.usage_estimated
    expected = (Decimal(record.prompt_tokens) * Decimal("0.15") + Decimal(record.completion_tokens) * Decimal("0.60")) / 10**6
    assert record.cost_usd == expected.quantize(Decimal("0.00000001"))
    assert record.provider_name == "fake" and record.requested_model == "gpt-4o-mini"


async def test_stream_without_include_usage_hides_usage_but_records_provider_usage(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    assert all(chunk["choices"] for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    [record] = await records()
    assert record.stream and record.status == "success" and not record.usage_estimated
    assert record.completion_tokens > 0 and text
    assert record.ttft_ms is not None
    assert {chunk["id"] for chunk in chunks} == {record.response_id}


async def test_stream_with_include_usage_forwards_final_usage_chunk(gateway):
    response = await post(
        gateway, "/v1/chat/completions", chat_body(stream=True, stream_options={"include_usage": True})
    )
    chunks = [json.loads(event) for event in (await sse_events(response))[:-1]]
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    [record] = await records()
    assert usage["prompt_tokens"] == record.prompt_tokens
    assert usage["completion_tokens"] == record.completion_tokens
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


async def test_stream_and_plain_answers_are_the_same_text(gateway):
    plain = (await post(gateway, "/v1/chat/completions", chat_body())).json()
    streamed = await post(gateway, "/v1/chat/completions", chat_body(stream=True))
    chunks = [json.loads(event) for event in (await sse_events(streamed))[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == plain["choices"][0]["message"]["content"]


async def test_missing_provider_usage_is_estimated_and_marked(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body("Count me [[fake no_usage]]"))
    assert response.status_code == 200
    assert "usage" not in response.json() or response.json()["usage"] is None
    [record] = await records()
    assert record.usage_estimated
    assert record.prompt_tokens > 0 and record.completion_tokens > 0
    assert record.cost_usd > 0


async def test_stream_without_provider_usage_gets_estimated_usage_chunk_when_asked(gateway):
    response = await post(
        gateway,
        "/v1/chat/completions",
        chat_body("[[fake no_usage]] hi", stream=True, stream_options={"include_usage": True}),
    )
    chunks = [json.loads(event) for event in (await sse_events(response))[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    [record] = await records()
    assert record.usage_estimated and record.completion_tokens == chunks[-1]["usage"]["completion_tokens"]


async def test_anthropic_provider_is_served_in_openai_format(gateway):
    response = await post(
        gateway,
        "/v1/chat/completions",
        json.dumps({
            "model": "claude-haiku-4-5",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        }),
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] > 0
    [record] = await records()
    assert record.provider_name == "fake-anthropic" and not record.usage_estimated


async def test_anthropic_stream_is_translated_to_openai_chunks(gateway):
    response = await post(
        gateway,
        "/v1/chat/completions",
        json.dumps({
            "model": "claude-haiku-4-5", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Hi"}],
        }),
    )
    events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert any(chunk["choices"] and chunk["choices"][0]["finish_reason"] == "stop" for chunk in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    [record] = await records()
    assert record.completion_tokens == chunks[-1]["usage"]["completion_tokens"]


async def test_provider_qualified_model_name(gateway):
    response = await post(
        gateway, "/v1/chat/completions",
        json.dumps({"model": "fake:gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    assert response.status_code == 200
    assert response.headers["x-gateway-model"] == "gpt-4o"


async def test_embeddings_float_and_base64(gateway):
    response = await post(
        gateway, "/v1/embeddings", json.dumps({"model": "text-embedding-3-small", "input": ["a", "b"]})
    )
    assert response.status_code == 200
    body = response.json()
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert isinstance(body["data"][0]["embedding"], list)
    encoded = await post(
        gateway, "/v1/embeddings",
        json.dumps({"model": "text-embedding-3-small", "input": "a", "encoding_format": "base64"}),
    )
    assert isinstance(encoded.json()["data"][0]["embedding"], str)
    saved = await records()
    assert [r.endpoint for r in saved] == ["embeddings", "embeddings"]
    assert saved[0].prompt_tokens == body["usage"]["prompt_tokens"] and saved[0].completion_tokens == 0


async def test_models_lists_only_what_the_key_may_use(gateway):
    response = await ApiClient().get("/v1/models", headers=gateway.auth)
    ids = {model["id"] for model in response.json()["data"]}
    assert ids == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-haiku-4-5"}
    _, limited = await sync_to_async(api_key_create)(tenant=gateway.tenant, name="lim", allowed_models=["gpt-4o"])
    response = await ApiClient().get("/v1/models", headers={"Authorization": f"Bearer {limited}"})
    assert [model["id"] for model in response.json()["data"]] == ["gpt-4o"]
    assert response.json()["object"] == "list"


# --- errors: client side --------------------------------------------------------------------------
def assert_openai_error(response, status: int, *, param: str | None = None, code: str | None = None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code


async def test_missing_key_is_401(gateway):
    response = await ApiClient().post("/v1/chat/completions", chat_body(), content_type="application/json")
    assert_openai_error(response, 401, code="missing_api_key")
    assert await records() == []


async def test_wrong_revoked_and_expired_keys_are_401(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body(), Authorization="Bearer sk-gw-nope")
    assert_openai_error(response, 401, code="invalid_api_key")
    key, raw = await sync_to_async(api_key_create)(tenant=gateway.tenant, name="old")
    await sync_to_async(api_key_revoke)(key=key)
    response = await post(gateway, "/v1/chat/completions", chat_body(), Authorization=f"Bearer {raw}")
    assert_openai_error(response, 401)
    _, raw = await sync_to_async(api_key_create)(
        tenant=gateway.tenant, name="expired", expires_at=timezone.now() - timedelta(minutes=1)
    )
    response = await post(gateway, "/v1/chat/completions", chat_body(), Authorization=f"Bearer {raw}")
    assert_openai_error(response, 401, code="expired_api_key")


async def test_model_not_allowed_is_403_and_recorded(gateway):
    _, raw = await sync_to_async(api_key_create)(tenant=gateway.tenant, name="lim", allowed_models=["gpt-4o"])
    response = await post(gateway, "/v1/chat/completions", chat_body(), Authorization=f"Bearer {raw}")
    assert_openai_error(response, 403, param="model", code="model_not_allowed")
    [record] = await records()
    assert record.status == "error" and record.http_status == 403 and record.cost_usd == 0


@pytest.mark.parametrize(
    "body, param",
    [
        ('{"model": "gpt-4o-mini"}', "messages"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "model"),
        ('{"model": "gpt-4o-mini", "messages": []}', "messages"),
        ('{"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 3}', "temperature"),
        ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "max_tokens"),
        ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "bogus": 1}', "bogus"),
        ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stop": [1]}', "stop"),
    ],
)
async def test_invalid_body_is_400_naming_the_parameter(gateway, body, param):
    assert_openai_error(await post(gateway, "/v1/chat/completions", body), 400, param=param)


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b"\xff\xfe{}", b"[" * 100_000])
async def test_unparseable_body_is_400(gateway, body):
    assert_openai_error(await post(gateway, "/v1/chat/completions", body), 400, code="invalid_json")


async def test_unknown_model_is_404(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body().replace("gpt-4o-mini", "gpt-99"))
    assert_openai_error(response, 404, param="model", code="model_not_found")


async def test_chat_with_embedding_model_is_400(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body().replace("gpt-4o-mini", "text-embedding-3-small"))
    assert_openai_error(response, 400, param="model")


async def test_unknown_route_and_wrong_method_answer_in_api_format(gateway):
    assert_openai_error(await ApiClient().get("/v1/nothing-here", headers=gateway.auth), 404)
    assert_openai_error(await ApiClient().get("/v1/chat/completions", headers=gateway.auth), 405)


@override_settings(GATEWAY_MAX_BODY_BYTES=2048, DATA_UPLOAD_MAX_MEMORY_SIZE=2048)
async def test_body_too_large_is_413(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body("x" * 5000))
    assert_openai_error(response, 413, code="request_too_large")


# --- errors: the gateway's own -------------------------------------------------------------------
@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", chat_body()),
    ("/v1/embeddings", json.dumps({"model": "text-embedding-3-small", "input": "hello"})),
])
async def test_a_bug_is_a_500_in_the_apis_shape_and_still_recorded_and_released(gateway, monkeypatch, path, body):
    """A request that fails on a bug of the gateway (here: once its budget is reserved) still gets
    its one UsageRecord, which releases the reservation."""
    from accounting.models import Budget, BudgetPeriod
    from routing import pipeline

    await Budget.objects.acreate(tenant=gateway.tenant, amount_usd=Decimal("10"), period="monthly", hard=True)

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline, "attempts_run", broken)
    response = await ApiClient().post(path, body, content_type="application/json", headers=gateway.auth)

    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"
    [record] = await records()
    assert (record.status, record.http_status, record.error_class) == ("error", 500, "internal")
    period = await BudgetPeriod.objects.aget()
    assert period.reserved_usd == 0 and period.spent_usd == record.cost_usd


# --- errors: upstream side -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "directive, status, error_class",
    [
        ("status=500", 502, "upstream_server"),
        ("status=503", 503, "overloaded"),
        ("status=401", 502, "auth"),
        ("context_length_exceeded", 400, "context_length_exceeded"),
    ],
)
async def test_upstream_failures_map_to_gateway_statuses(gateway, directive, status, error_class):
    response = await post(gateway, "/v1/chat/completions", chat_body(f"[[fake {directive}]]"))
    assert_openai_error(response, status, code=error_class)
    [record] = await records()
    assert record.status == "error" and record.error_class == error_class and record.http_status == status
    assert record.attempts[0]["error_class"] == error_class


async def test_upstream_rate_limit_is_429_with_retry_after(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body("[[fake status=429 retry_after=7]]"))
    assert_openai_error(response, 429, code="rate_limited")
    assert response.headers["retry-after"] == "7"


async def test_upstream_timeout_is_504(gateway):
    await Provider.objects.filter(pk=gateway.provider.pk).aupdate(timeout_seconds=0.5)
    response = await post(gateway, "/v1/chat/completions", chat_body("[[fake timeout]]"))
    assert_openai_error(response, 504, code="timeout")


async def test_unreachable_provider_is_502(gateway):
    await Provider.objects.filter(pk=gateway.provider.pk).aupdate(api_base=f"http://127.0.0.1:{free_port()}/v1")
    response = await post(gateway, "/v1/chat/completions", chat_body())
    assert_openai_error(response, 502, code="connection")


async def test_stream_failing_before_first_chunk_is_a_plain_http_error(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body("[[fake status=500]]", stream=True))
    assert_openai_error(response, 502, code="upstream_server")


async def test_failover_to_next_provider_on_connection_error(gateway):
    dead = await Provider.objects.acreate(
        name="dead", type="openai", api_base=f"http://127.0.0.1:{free_port()}/v1", priority=1
    )
    await sync_to_async(provider_key_upsert)(provider=dead, name="default", secret="sk-dead")
    await ProviderModel.objects.acreate(provider=dead, alias="gpt-4o-mini", upstream_model="gpt-4o-mini")
    response = await post(gateway, "/v1/chat/completions", chat_body())
    assert response.status_code == 200
    # The dead provider is retried once (the default), then the request fails over.
    assert response.headers["x-gateway-attempts"] == "3"
    assert response.headers["x-gateway-provider"] == "fake"
    [record] = await records()
    assert [a["provider"] for a in record.attempts] == ["dead", "dead", "fake"]
    assert [a["status"] for a in record.attempts] == ["error", "error", "success"]


async def test_stream_cut_mid_way_ends_with_error_event_and_records_what_was_sent(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body("[[fake disconnect_after=3 chunks=10]]", stream=True))
    assert response.status_code == 200
    events = await sse_events(response)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["code"] == "connection"
    [record] = await records()
    assert record.status == "error" and record.error_class == "connection"
    assert record.completion_tokens > 0 and record.usage_estimated


async def test_malformed_provider_answers_are_502_not_500(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body("[[fake malformed]]"))
    assert_openai_error(response, 502, code="upstream_server")
    streamed = await post(gateway, "/v1/chat/completions", chat_body("[[fake malformed]]", stream=True))
    # The fake sends its role-only chunk, then a broken one in place of the first content: the
    # provider failed before answering anything, so it is a plain 502 (after any failover).
    assert_openai_error(streamed, 502, code="upstream_server")
    # Broken after some content: an error event ends the stream.
    streamed = await post(gateway, "/v1/chat/completions", chat_body("[[fake disconnect_after=2]]", stream=True))
    assert streamed.status_code == 200
    events = await sse_events(streamed)
    assert json.loads(events[-1])["error"]["code"] == "connection"
    assert "[DONE]" not in events


async def test_x_api_key_header_authenticates_too(gateway):
    response = await ApiClient().post(
        "/v1/chat/completions", chat_body(), content_type="application/json",
        headers={"x-api-key": gateway.raw_key},
    )
    assert response.status_code == 200


async def test_end_user_is_recorded(gateway):
    await post(gateway, "/v1/chat/completions", chat_body(user="user-42"))
    [record] = await records()
    assert record.end_user == "user-42"


async def test_unexpected_failure_mid_stream_ends_the_stream_cleanly_and_is_recorded(gateway, monkeypatch):
    from providers.adapters.openai import OpenAIAdapter

    original = OpenAIAdapter.chat_stream_chunks

    async def breaks_after_first(self, events, target):
        sent = 0
        async for chunk in original(self, events, target):
            yield chunk
            sent += 1
            if sent == 2:  # the role chunk and the first content: the stream has begun
                raise RuntimeError("a bug in an adapter")

    monkeypatch.setattr(OpenAIAdapter, "chat_stream_chunks", breaks_after_first)
    response = await post(gateway, "/v1/chat/completions", chat_body(stream=True))
    events = await sse_events(response)
    assert json.loads(events[-1])["error"]["type"] == "api_error"
    assert "[DONE]" not in events
    [record] = await records()
    assert record.status == "error" and record.error_class == "internal" and record.http_status == 500


IMAGE_MESSAGE = [{"role": "user", "content": [
    {"type": "text", "text": "What is this?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
]}]


async def capabilities_set(alias: str, capabilities: list[str]) -> None:
    model = await ProviderModel.objects.aget(alias=alias)
    model.capabilities = capabilities
    await model.asave(update_fields=["capabilities"])  # as the admin does: the routing table reloads


async def test_images_to_a_model_without_vision_are_a_400_naming_messages(gateway):
    await capabilities_set("gpt-4o-mini", ["streaming"])
    response = await post(gateway, "/v1/chat/completions", json.dumps({"model": "gpt-4o-mini", "messages": IMAGE_MESSAGE}))
    assert_openai_error(response, 400, param="messages", code="unsupported_content")


async def test_images_pass_to_models_with_vision_or_unlisted_capabilities(gateway):
    await capabilities_set("gpt-4o", ["vision"])
    for model in ("gpt-4o", "gpt-4o-mini"):
        response = await post(gateway, "/v1/chat/completions", json.dumps({"model": model, "messages": IMAGE_MESSAGE}))
        assert response.status_code == 200, response.content


PERSON = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"], "additionalProperties": False}}}


async def test_structured_output_is_checked_against_the_schema(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body("Describe someone", response_format=PERSON))
    assert response.status_code == 200
    person = json.loads(response.json()["choices"][0]["message"]["content"])
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    assert response.headers["x-gateway-attempts"] == "1"


async def test_structured_output_gets_one_repair_and_both_calls_are_billed(gateway):
    response = await post(gateway, "/v1/chat/completions", chat_body("[[fake bad_json]] Describe", response_format=PERSON))
    assert response.status_code == 200
    assert json.loads(response.json()["choices"][0]["message"]["content"])["age"]
    assert response.headers["x-gateway-attempts"] == "2"
    [record] = await records()
    assert record.status == "success" and record.prompt_tokens > 20  # two prompts, the second longer


async def test_structured_output_that_stays_invalid_is_a_clear_error(gateway, fake_provider_url):
    import httpx

    async with httpx.AsyncClient() as client:
        await client.put(f"{fake_provider_url}/_fake/directive", json={"directive": "bad_json"})
    try:
        response = await post(gateway, "/v1/chat/completions", chat_body("Describe", response_format=PERSON))
    finally:
        async with httpx.AsyncClient() as client:
            await client.delete(f"{fake_provider_url}/_fake/directive")
    assert_openai_error(response, 502, code="structured_output_invalid")
    assert "not valid JSON" in response.json()["error"]["message"]
    [record] = await records()
    assert record.error_class == "structured_output_invalid" and record.cost_usd > 0  # both calls billed


async def test_invalid_schema_is_a_400(gateway):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    response = await post(gateway, "/v1/chat/completions", chat_body(response_format=bad))
    assert_openai_error(response, 400, param="response_format")


async def test_streamed_structured_output_is_checked_at_the_end(gateway):
    ok = await post(gateway, "/v1/chat/completions", chat_body("Describe", stream=True, response_format=PERSON))
    events = await sse_events(ok)
    assert events[-1] == "[DONE]"
    bad = await post(gateway, "/v1/chat/completions", chat_body("[[fake bad_json]] x", stream=True, response_format=PERSON))
    events = await sse_events(bad)
    assert json.loads(events[-1])["error"]["code"] == "structured_output_invalid"
