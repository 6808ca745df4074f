"""Gemini end to end: the gateway's OpenAI API in process (Django's async client) against the real
fake provider process speaking Gemini, so both sides of the translation meet over real HTTP.

The last tests drive the fake's Gemini dialect directly in process (`build_app()`), for what the
gateway never sends: a key in the query, a missing key, fields Gemini does not know.
"""

from __future__ import annotations

import base64
import json
import struct

import httpx
import pytest
from tests.asgi_client import ApiClient

from accounting.models import UsageRecord
from providers.fake import build_app
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert

gateway_db = pytest.mark.django_db(transaction=True)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture
def gemini(gateway, fake_provider_url):
    """The shared gateway setup plus a Gemini provider on the fake, under gemini-* aliases."""
    provider = Provider.objects.create(
        name="fake-gemini", type="gemini", api_base=fake_provider_url)
    provider_key_upsert(provider=provider, name="default", secret="AIza-fake-gemini-secret-0003")
    ProviderModel.objects.create(
        provider=provider, alias="gemini-flash", upstream_model="gemini-2.5-flash",
        input_price_per_million="0.30", output_price_per_million="2.50", context_window=1_048_576,
    )
    ProviderModel.objects.create(
        provider=provider, alias="gemini-3-flash", upstream_model="gemini-3-flash-preview",
        input_price_per_million="0.50", output_price_per_million="3.00",
    )
    ProviderModel.objects.create(
        provider=provider, alias="gemini-embedding", upstream_model="gemini-embedding-001",
        mode="embedding", input_price_per_million="0.15",
    )
    return gateway


def chat_body(content: str = "Hello there", model: str = "gemini-flash", **extra) -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra})


async def post(gateway, path: str, body: str):
    return await ApiClient().post(path, body, content_type="application/json",
                                    headers=gateway.auth)


async def records() -> list[UsageRecord]:
    return [record async for record in UsageRecord.objects.order_by("created_at")]


async def sse_chunks(response) -> list[dict]:
    raw = response.content.decode()
    events = [block[len("data: "):] for block in raw.split("\n\n") if block.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def stream_text(chunks: list[dict]) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content") or ""
                   for chunk in chunks if chunk["choices"])


# --- chat -----------------------------------------------------------------------------------


@gateway_db
async def test_plain_chat(gemini):
    response = await post(gemini, "/v1/chat/completions", json.dumps({
        "model": "gemini-flash", "max_tokens": 50, "temperature": 0.3,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hello there"}],
    }))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gemini-2.5-flash"
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert response.headers["x-gateway-provider"] == "fake-gemini"
    [record] = await records()
    assert record.response_id == body["id"]
    assert record.status == "success" and not record.usage_estimated
    assert record.prompt_tokens == body["usage"]["prompt_tokens"] > 0
    assert record.completion_tokens == body["usage"]["completion_tokens"] > 0
    assert record.cost_usd > 0


@gateway_db
async def test_max_tokens_is_a_length_stop(gemini):
    response = await post(gemini, "/v1/chat/completions", chat_body(max_tokens=3))

    [choice] = response.json()["choices"]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"].split()) == 3


@gateway_db
async def test_stream_with_usage_matches_the_plain_answer(gemini):
    plain = (await post(gemini, "/v1/chat/completions", chat_body("Stream me"))).json()

    response = await post(gemini, "/v1/chat/completions", chat_body(
        "Stream me [[fake chunks=12 ttft_ms=20]]", stream=True,
        stream_options={"include_usage": True}))

    assert response.status_code == 200
    chunks = await sse_chunks(response)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert stream_text(chunks) == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    _, record = await records()
    assert record.stream and record.status == "success" and not record.usage_estimated
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        record.prompt_tokens, record.completion_tokens)
    assert usage["completion_tokens"] == plain["usage"]["completion_tokens"]
    assert record.ttft_ms is not None


@gateway_db
async def test_structured_output(gemini):
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    response = await post(gemini, "/v1/chat/completions", chat_body(
        "Where?", response_format={"type": "json_schema",
                                   "json_schema": {"name": "place", "schema": schema}}))

    assert response.status_code == 200, response.content
    answer = json.loads(response.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"city"} and isinstance(answer["city"], str)


# --- tools ----------------------------------------------------------------------------------


@gateway_db
async def test_tool_round_trip(gemini):
    """The model asks for a tool; the client runs it and sends the result back for an answer.

    The fake behaves like Gemini 3 and refuses a function call sent back without its thought
    signature, so this also proves the signature survives the round trip through OpenAI's shape.
    """
    question = {"role": "user", "content": "Weather in Paris? [[fake tool=get_weather]]"}
    first = await post(gemini, "/v1/chat/completions", json.dumps({
        "model": "gemini-3-flash", "messages": [question], "tools": [WEATHER_TOOL]}))

    assert first.status_code == 200, first.content
    [choice] = first.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"city", "days"} and isinstance(arguments["days"], int)
    assert call["extra_content"]["google"]["thought_signature"]

    history = [question, choice["message"],
               {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'}]
    second = await post(gemini, "/v1/chat/completions", json.dumps({
        "model": "gemini-3-flash", "messages": history, "tools": [WEATHER_TOOL]}))

    assert second.status_code == 200, second.content
    [answer] = second.json()["choices"]
    assert answer["finish_reason"] == "stop"
    assert answer["message"]["content"].strip() and "tool_calls" not in answer["message"]

    stripped = {key: value for key, value in call.items() if key != "extra_content"}
    history[1] = {**choice["message"], "tool_calls": [stripped]}
    refused = await post(gemini, "/v1/chat/completions", json.dumps({
        "model": "gemini-3-flash", "messages": history, "tools": [WEATHER_TOOL]}))
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "bad_request"
    assert "thought_signature" in refused.json()["error"]["message"]


@gateway_db
async def test_streamed_tool_call(gemini):
    response = await post(gemini, "/v1/chat/completions", chat_body(
        "Weather? [[fake tool=get_weather]]", tools=[WEATHER_TOOL], stream=True,
        stream_options={"include_usage": True}))

    chunks = await sse_chunks(response)
    calls = [call for chunk in chunks if chunk["choices"]
             for call in chunk["choices"][0]["delta"].get("tool_calls") or ()]
    assert [(call["index"], call["function"]["name"]) for call in calls] == [(0, "get_weather")]
    assert json.loads(calls[0]["function"]["arguments"])["city"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


@gateway_db
async def test_tool_choice_forces_a_call(gemini):
    response = await post(gemini, "/v1/chat/completions", chat_body(
        "Anything", tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))

    assert response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == (
        "get_weather")


# --- failures -------------------------------------------------------------------------------


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    return error


@gateway_db
async def test_rate_limit_is_429_with_retry_after(gemini):
    response = await post(gemini, "/v1/chat/completions",
                          chat_body("[[fake status=429 retry_after=7]]"))

    assert_error(response, 429, "rate_limited")
    # The fake, like Google, says the delay only in a RetryInfo detail of the body.
    assert response.headers["retry-after"] == "7"
    [record] = await records()
    assert record.status == "error" and record.error_class == "rate_limited"


@gateway_db
async def test_context_length_exceeded(gemini):
    response = await post(gemini, "/v1/chat/completions",
                          chat_body("[[fake context_length_exceeded]]"))

    assert_error(response, 400, "context_length_exceeded")


@gateway_db
async def test_malformed_body_is_502(gemini):
    response = await post(gemini, "/v1/chat/completions", chat_body("[[fake malformed]]"))

    assert_error(response, 502, "upstream_server")


@gateway_db
async def test_missing_usage_is_estimated(gemini):
    response = await post(gemini, "/v1/chat/completions", chat_body("Count me [[fake no_usage]]"))

    assert response.status_code == 200
    assert response.json().get("usage") is None
    [record] = await records()
    assert record.usage_estimated and record.completion_tokens > 0


@gateway_db
async def test_stream_cut_mid_way_ends_with_an_error_event(gemini):
    response = await post(gemini, "/v1/chat/completions",
                          chat_body("[[fake disconnect_after=3 chunks=10]]", stream=True))

    assert response.status_code == 200
    raw = response.content.decode()
    events = [json.loads(block[len("data: "):]) for block in raw.split("\n\n")
              if block.startswith("data: {")]
    assert events[-1]["error"]["code"] == "connection"
    assert len(stream_text(events[:-1]).split()) == 3
    [record] = await records()
    assert record.status == "error" and record.completion_tokens == 3


# --- embeddings -----------------------------------------------------------------------------


@gateway_db
async def test_embeddings(gemini):
    one = await post(gemini, "/v1/embeddings",
                     json.dumps({"model": "gemini-embedding", "input": "hello", "dimensions": 8}))
    many = await post(gemini, "/v1/embeddings", json.dumps(
        {"model": "gemini-embedding", "input": ["hello", "world"], "dimensions": 8,
         "encoding_format": "base64"}))

    assert one.status_code == 200, one.content
    [item] = one.json()["data"]
    assert item["object"] == "embedding" and len(item["embedding"]) == 8
    assert many.status_code == 200, many.content
    data = many.json()["data"]
    assert [entry["index"] for entry in data] == [0, 1]
    # The same text gives the same vector, whichever endpoint carried it.
    first = list(struct.unpack("<8f", base64.b64decode(data[0]["embedding"])))
    assert first == item["embedding"]
    saved = await records()
    assert [record.endpoint for record in saved] == ["embeddings", "embeddings"]
    assert all(record.usage_estimated and record.prompt_tokens > 0 for record in saved)


# --- the fake's Gemini dialect in process ---------------------------------------------------


@pytest.fixture
async def fake():
    app = build_app(api_key="AIza-right")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://fake") as client:
        yield client


GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
CONTENTS = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


async def test_fake_takes_the_key_in_header_or_query(fake):
    by_header = await fake.post(GENERATE, json=CONTENTS, headers={"x-goog-api-key": "AIza-right"})
    by_query = await fake.post(f"{GENERATE}?key=AIza-right", json=CONTENTS)

    assert by_header.status_code == by_query.status_code == 200
    assert by_header.json()["candidates"] == by_query.json()["candidates"]


async def test_fake_auth_errors_in_googles_shape(fake):
    missing = await fake.post(GENERATE, json=CONTENTS)
    wrong = await fake.post(GENERATE, json=CONTENTS, headers={"x-goog-api-key": "AIza-wrong"})

    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"
    assert wrong.status_code == 400
    error = wrong.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (GENERATE, {"messages": []}, 'Unknown name "messages"'),
        (GENERATE, {"contents": []}, "contents is not specified"),
        (GENERATE, {**CONTENTS, "generationConfig": {"max_tokens": 5}},
         'Unknown name "max_tokens"'),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", CONTENTS, "alt=sse"),
        ("/v1beta/models/e:batchEmbedContents",
         {"requests": [{"model": "models/other", "content": {"parts": [{"text": "a"}]}}]},
         "model of the batch"),
    ],
)
async def test_fake_refuses_what_gemini_refuses(fake, path, body, message):
    response = await fake.post(path, json=body, headers={"x-goog-api-key": "AIza-right"})

    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


async def test_fake_stream_events_are_crlf_separated_responses(fake):
    body = {**CONTENTS, "generationConfig": {"maxOutputTokens": 4}}
    headers = {"x-goog-api-key": "AIza-right", "x-fake-directive": "chunks=6"}
    response = await fake.post(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", json=body, headers=headers)

    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(block.removeprefix("data: "))
              for block in response.text.split("\r\n\r\n") if block]
    assert len(events) == 5  # four pieces, then the finish
    assert events[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 4
    plain = await fake.post(GENERATE, json=body, headers=headers)
    text = "".join(event["candidates"][0]["content"]["parts"][0]["text"] for event in events)
    assert text == plain.json()["candidates"][0]["content"]["parts"][0]["text"]
