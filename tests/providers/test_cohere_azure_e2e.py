"""Cohere and Azure OpenAI providers end to end: the gateway's API in process (Django's async
client) against the real fake provider process, which speaks Cohere v2 (`/v2/chat`, `/v2/embed`)
and Azure's deployment routes (`/openai/deployments/{deployment}/...?api-version=`)."""

from __future__ import annotations

import base64
import json

import pytest
from tests.asgi_client import ApiClient

from accounting.models import UsageRecord
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def providers(gateway, fake_provider_url):
    """Cohere and Azure providers on the fake, beside the gateway fixture's OpenAI/Anthropic ones."""
    cohere = Provider.objects.create(name="fake-cohere", type="cohere", api_base=fake_provider_url)
    provider_key_upsert(provider=cohere, name="default", secret="co-fake-provider-secret-0003")
    ProviderModel.objects.create(
        provider=cohere, alias="command-a", upstream_model="command-a-03-2025",
        input_price_per_million="2.50", output_price_per_million="10.00",
    )
    ProviderModel.objects.create(
        provider=cohere, alias="embed-v4", upstream_model="embed-v4.0", mode="embedding",
        input_price_per_million="0.12",
    )
    azure = Provider.objects.create(name="fake-azure", type="azure", api_base=fake_provider_url)
    provider_key_upsert(provider=azure, name="default", secret="az-fake-provider-secret-0004")
    ProviderModel.objects.create(
        provider=azure, alias="azure-gpt-4o", upstream_model="gpt-4o-prod",
        input_price_per_million="2.50", output_price_per_million="10.00",
    )
    ProviderModel.objects.create(
        provider=azure, alias="azure-embed", upstream_model="embed-small", mode="embedding",
        input_price_per_million="0.02",
    )
    return gateway


async def post(gateway, path: str, body: dict):
    return await ApiClient().post(path, json.dumps(body), content_type="application/json", headers=gateway.auth)


def chat(model: str, content: str = "What is the weather like?", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def stream_chunks(response) -> list[dict]:
    raw = response.content.decode()
    events = [block[len("data: "):] for block in raw.split("\n\n") if block.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def streamed_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def records() -> list[UsageRecord]:
    return [record async for record in UsageRecord.objects.order_by("created_at")]


# --- Cohere ---------------------------------------------------------------------------------


async def test_cohere_chat(providers):
    response = await post(providers, "/v1/chat/completions", chat("command-a"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert response.headers["x-gateway-provider"] == "fake-cohere"
    assert response.headers["x-gateway-model"] == "command-a-03-2025"
    assert body["object"] == "chat.completion"
    assert body["model"] == "command-a-03-2025"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    [record] = await records()
    assert record.status == "success" and not record.usage_estimated
    assert record.prompt_tokens == body["usage"]["prompt_tokens"] > 0
    assert record.completion_tokens == body["usage"]["completion_tokens"] == 12


async def test_cohere_stream_with_usage_matches_the_plain_answer(providers):
    plain = (await post(providers, "/v1/chat/completions", chat("command-a"))).json()
    response = await post(
        providers, "/v1/chat/completions",
        chat("command-a", stream=True, stream_options={"include_usage": True}),
    )

    assert response.status_code == 200
    chunks = await stream_chunks(response)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain["usage"]
    assert streamed_text(chunks) == plain["choices"][0]["message"]["content"]
    streamed = (await records())[-1]
    assert streamed.stream and not streamed.usage_estimated
    assert streamed.completion_tokens == plain["usage"]["completion_tokens"]


async def test_cohere_max_tokens_is_a_length_stop(providers):
    response = await post(providers, "/v1/chat/completions", chat("command-a", max_tokens=3))

    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


async def test_cohere_tools_round_trip(providers):
    question = chat("command-a", "Weather in Paris? [[fake tool=get_weather]]", tools=[WEATHER])
    first = await post(providers, "/v1/chat/completions", question)

    assert first.status_code == 200, first.content
    choice = first.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"city", "days"} and isinstance(arguments["days"], int)

    follow_up = {
        **question,
        "messages": [
            *question["messages"],
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temp_c": 21})},
        ],
    }
    second = await post(providers, "/v1/chat/completions", follow_up)

    assert second.status_code == 200, second.content
    answer = second.json()["choices"][0]
    assert answer["finish_reason"] == "stop"
    assert answer["message"]["content"].strip() and "tool_calls" not in answer["message"]


async def test_cohere_streamed_tool_call_assembles_to_the_plain_one(providers):
    question = chat("command-a", "Weather in Paris? [[fake tool=get_weather]]", tools=[WEATHER])
    plain = (await post(providers, "/v1/chat/completions", question)).json()["choices"][0]
    response = await post(providers, "/v1/chat/completions", {**question, "stream": True})

    chunks = await stream_chunks(response)
    calls = [delta for c in chunks for delta in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    assert "".join(d["function"]["arguments"] for d in calls) == plain["message"]["tool_calls"][0]["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_cohere_rate_limit_is_429_with_retry_after(providers):
    response = await post(providers, "/v1/chat/completions", chat("command-a", "Hi [[fake status=429 retry_after=3]]"))

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert response.headers["retry-after"] == "3"
    assert "fake-cohere" in response.json()["error"]["message"]


async def test_cohere_context_length_is_400(providers):
    response = await post(providers, "/v1/chat/completions", chat("command-a", "Hi [[fake context_length_exceeded]]"))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_cohere_embeddings_float_and_base64(providers):
    response = await post(providers, "/v1/embeddings", {"model": "embed-v4", "input": ["alpha", "beta"]})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "list" and body["model"] == "embed-v4.0"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 1536
    encoded = await post(
        providers, "/v1/embeddings",
        {"model": "embed-v4", "input": "alpha", "encoding_format": "base64", "dimensions": 256},
    )
    vector = encoded.json()["data"][0]["embedding"]
    assert isinstance(vector, str) and len(base64.b64decode(vector)) == 256 * 4
    saved = await records()
    assert [r.endpoint for r in saved] == ["embeddings", "embeddings"]
    assert saved[0].prompt_tokens == body["usage"]["prompt_tokens"] > 0


# --- Azure OpenAI ---------------------------------------------------------------------------


async def test_azure_chat(providers):
    response = await post(providers, "/v1/chat/completions", chat("azure-gpt-4o"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert response.headers["x-gateway-provider"] == "fake-azure"
    # The fake names the deployment as the model, as the path told it.
    assert body["model"] == "gpt-4o-prod"
    assert body["choices"][0]["message"]["content"].strip()
    assert body["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    [record] = await records()
    assert record.prompt_tokens == body["usage"]["prompt_tokens"] > 0 and not record.usage_estimated


async def test_azure_stream_skips_the_prompt_filter_chunk(providers):
    response = await post(
        providers, "/v1/chat/completions",
        chat("azure-gpt-4o", stream=True, stream_options={"include_usage": True}),
    )

    assert response.status_code == 200
    chunks = await stream_chunks(response)
    assert all(c["choices"] for c in chunks[:-1])
    assert not any("prompt_filter_results" in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    assert streamed_text(chunks)


async def test_azure_tool_call(providers):
    response = await post(
        providers, "/v1/chat/completions",
        chat("azure-gpt-4o", "Weather? [[fake tool=get_weather]]", tools=[WEATHER]),
    )

    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_azure_rate_limit_is_429_with_retry_after(providers):
    response = await post(providers, "/v1/chat/completions", chat("azure-gpt-4o", "Hi [[fake status=429 retry_after=2]]"))

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert response.headers["retry-after"] == "2"


async def test_azure_embeddings(providers):
    response = await post(providers, "/v1/embeddings", {"model": "azure-embed", "input": ["a", "b"], "dimensions": 64})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == "embed-small"
    assert [len(item["embedding"]) for item in body["data"]] == [64, 64]
    [record] = await records()
    assert record.prompt_tokens == body["usage"]["prompt_tokens"] > 0
