"""End to end: the response cache through the official SDKs against the gateway under uvicorn."""

from __future__ import annotations

import asyncio
import uuid

import anthropic
import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture
def fake_url(stack) -> str:
    [(api_base,)] = stack.query("SELECT api_base FROM providers_provider WHERE name = 'fake'")
    return api_base.removesuffix("/v1")


def chat_calls(fake_url: str) -> int:
    return httpx.get(f"{fake_url}/_fake/stats").json()["by_path"].get("/v1/chat/completions", 0)


def test_ten_concurrent_sdk_requests_share_one_upstream_call(stack, fake_url):
    prompt = f"Popular question {uuid.uuid4().hex} [[fake delay_ms=500]]"

    async def burst():
        client = openai.AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)
        async with client:
            return await asyncio.gather(*(
                client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", temperature=0, messages=[{"role": "user", "content": prompt}]
                )
                for _ in range(10)
            ))

    before = chat_calls(fake_url)
    raws = asyncio.run(burst())
    assert chat_calls(fake_url) == before + 1
    assert sorted(raw.headers["x-gateway-cache"] for raw in raws) == ["hit"] * 9 + ["miss"]
    completions = [raw.parse() for raw in raws]
    assert len({c.id for c in completions}) == 10
    assert len({c.choices[0].message.content for c in completions}) == 1
    rows = stack.wait_for_rows(
        "SELECT cache, cost_usd, saved_cost_usd FROM accounting_usagerecord WHERE response_id = ANY(%s)",
        ([c.id for c in completions],), 10,
    )
    assert sorted(cache for cache, _, _ in rows) == ["hit"] * 9 + ["miss"]
    [miss_cost] = [cost for cache, cost, _ in rows if cache == "miss"]
    assert all(cost == 0 and saved == miss_cost for cache, cost, saved in rows if cache == "hit")


def test_sdk_stream_is_replayed_from_the_cache(stack, fake_url):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)
    messages = [{"role": "user", "content": f"Replay {uuid.uuid4().hex}"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_body={"cache": True})
    before = chat_calls(fake_url)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True},
        extra_body={"cache": True},
    ) as response:
        assert response.headers["x-gateway-cache"] == "hit"
        chunks = list(response.parse())
    assert chat_calls(fake_url) == before
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    stats = httpx.get(f"{stack.base_url}/v1/cache/stats", headers={"Authorization": f"Bearer {stack.api_key}"}).json()
    assert stats["hits"] >= 1 and stats["entries"] >= 1


def test_anthropic_sdk_hits_the_cache(stack, fake_url):
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    prompt = f"Anthropic cache {uuid.uuid4().hex}"
    raws = [
        client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": prompt}],
            extra_headers={"Cache-Control": "max-age=600"},  # asks for the cache
        )
        for _ in range(2)
    ]
    assert [raw.headers["x-gateway-cache"] for raw in raws] == ["miss", "hit"]
    first, second = (raw.parse() for raw in raws)
    assert first.content[0].text == second.content[0].text and first.id != second.id
