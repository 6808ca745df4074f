"""The semantic cache: embeddings through the gateway's own embedding model (the fake provider's
bag-of-words vectors), a threshold per policy, tenant scope, expiry and clearing."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, override_settings

from accounting.models import UsageRecord
from accounting.services import api_key_create, tenant_create
from caching.models import CachePolicy
from caching.semantic import SemanticIndex, semantic_index
from tests.asgi_client import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "What is the capital of France?"
REPHRASED = "Tell me: what is the capital city of France?"  # 7 of 10 words shared: cosine ~0.84
UNRELATED = "Write a short poem about winter mornings."


def chat(content: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}


async def post(auth: dict, body: dict, **headers):
    return await ApiClient().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", headers={**auth, **headers}
    )


async def chat_calls(fake_provider_url: str) -> int:
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{fake_provider_url}/_fake/stats")).json()
    return stats["by_path"].get("/v1/chat/completions", 0)


def semantic_policy(tenant, *, threshold="0.800", ttl=3600) -> CachePolicy:
    return CachePolicy.objects.create(
        name=f"semantic-{tenant.slug}", tenant=tenant, mode="semantic", ttl_seconds=ttl,
        semantic_threshold=threshold, embedding_model="text-embedding-3-small",
    )


async def test_similar_question_is_answered_from_the_semantic_cache(gateway, fake_provider_url):
    await sync_to_async(semantic_policy)(gateway.tenant)
    first = await post(gateway.auth, chat(QUESTION))
    assert first.headers["x-gateway-cache"] == "miss"
    before = await chat_calls(fake_provider_url)
    similar = await post(gateway.auth, chat(REPHRASED))
    assert similar.status_code == 200 and similar.headers["x-gateway-cache"] == "hit"
    assert await chat_calls(fake_provider_url) == before
    assert similar.json()["choices"] == first.json()["choices"] and similar.json()["id"] != first.json()["id"]
    unrelated = await post(gateway.auth, chat(UNRELATED))
    assert unrelated.headers["x-gateway-cache"] == "miss"
    assert await chat_calls(fake_provider_url) == before + 1
    rows = [r async for r in UsageRecord.objects.order_by("created_at")]
    chats = [r for r in rows if r.endpoint == "chat.completions"]
    assert [r.cache for r in chats] == ["miss", "semantic", "miss"]
    assert chats[1].cost_usd == 0 and chats[1].saved_cost_usd == chats[0].cost_usd > 0
    embeddings = [r for r in rows if r.endpoint == "embeddings"]
    assert len(embeddings) == 3 and {r.task for r in embeddings} == {"cache.semantic"}
    assert all(r.cost_usd > 0 for r in embeddings)  # the embedding calls are billed like any other
    stats = (await AsyncClient().get("/v1/cache/stats", headers=gateway.auth)).json()
    assert (stats["hits"], stats["semantic_hits"], stats["misses"], stats["semantic_entries"]) == (1, 1, 2, 2)


async def test_threshold_is_per_policy(gateway):
    await sync_to_async(semantic_policy)(gateway.tenant, threshold="0.950")
    await post(gateway.auth, chat(QUESTION))
    assert (await post(gateway.auth, chat(REPHRASED))).headers["x-gateway-cache"] == "miss"
    assert (await post(gateway.auth, chat(QUESTION))).headers["x-gateway-cache"] == "hit"  # exact


async def test_semantic_cache_is_scoped_to_the_tenant_and_cleared_per_tenant(gateway):
    other = await sync_to_async(tenant_create)(slug="initech")
    _, raw = await sync_to_async(api_key_create)(tenant=other, name="default")
    other_auth = {"Authorization": f"Bearer {raw}"}
    await sync_to_async(semantic_policy)(gateway.tenant)
    await sync_to_async(semantic_policy)(other)
    await post(gateway.auth, chat(QUESTION))
    assert (await post(other_auth, chat(REPHRASED))).headers["x-gateway-cache"] == "miss"
    assert (await post(other_auth, chat(REPHRASED + " Please."))).headers["x-gateway-cache"] == "hit"
    cleared = (await AsyncClient().delete("/v1/cache", headers=gateway.auth)).json()
    assert (cleared["entries"], cleared["semantic_entries"]) == (1, 1)
    assert (await post(gateway.auth, chat(REPHRASED))).headers["x-gateway-cache"] == "miss"
    assert (await post(other_auth, chat(REPHRASED))).headers["x-gateway-cache"] == "hit"


async def test_semantic_entries_expire_with_their_answer(gateway):
    await sync_to_async(semantic_policy)(gateway.tenant, ttl=1)
    assert (await post(gateway.auth, chat(QUESTION))).headers["x-gateway-cache"] == "miss"
    deadline = time.monotonic() + 5
    while (await post(gateway.auth, chat(REPHRASED))).headers["x-gateway-cache"] == "hit":
        assert time.monotonic() < deadline, "the semantic entry never expired"
        await asyncio.sleep(0.1)
    assert semantic_index().count(gateway.tenant.pk) <= 1  # the expired one is gone


async def test_missing_embedding_model_leaves_the_request_alone(gateway):
    await sync_to_async(CachePolicy.objects.create)(
        name="bad", tenant=gateway.tenant, mode="semantic", embedding_model="no-such-embedder",
    )
    response = await post(gateway.auth, chat(QUESTION))
    assert response.status_code == 200 and response.headers["x-gateway-cache"] == "miss"
    assert (await post(gateway.auth, chat(QUESTION))).headers["x-gateway-cache"] == "hit"  # exact still works


def test_index_is_bounded_and_evicts_the_oldest():
    index = SemanticIndex(max_entries=3)
    for n in range(5):
        index.add(tenant_id=1, scope="s", key=f"k{n}", vector=[1.0, float(n)], ttl=60)
    assert len(index) == 3
    found = index.search(tenant_id=1, scope="s", vector=[1.0, 0.0], threshold=0.0)
    assert found is not None and found[0] == "k2"  # k0 and k1 were evicted
    assert index.search(tenant_id=2, scope="s", vector=[1.0, 0.0], threshold=0.0) is None


@override_settings(GATEWAY_SEMANTIC_CACHE_MAX_ENTRIES=2)
def test_process_index_follows_the_configured_bound():
    assert semantic_index().max_entries == 2
