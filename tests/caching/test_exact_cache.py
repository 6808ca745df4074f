"""The exact cache, single flight and the operator endpoints, in process (Django's async client)
against the real fake provider, real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, override_settings

from accounting.models import UsageRecord
from accounting.services import api_key_create, tenant_create
from caching.models import CachePolicy
from tests.asgi_client import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)


def chat(content: str = "Hello cache", **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


async def post(auth: dict, body: dict, **headers):
    return await ApiClient().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", headers={**auth, **headers}
    )


async def upstream_calls(fake_provider_url: str) -> int:
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{fake_provider_url}/_fake/stats")).json()
    return stats["by_path"].get("/v1/chat/completions", 0)


async def records() -> list[UsageRecord]:
    return [r async for r in UsageRecord.objects.filter(endpoint="chat.completions").order_by("created_at")]


async def sse_chunks(response) -> tuple[list[dict], str]:
    raw = response.content.decode()
    events = [block[len("data: "):] for block in raw.split("\n\n") if block.startswith("data: ")]
    return [json.loads(event) for event in events[:-1]], events[-1]


@pytest.fixture
def other_tenant(gateway):
    tenant = tenant_create(slug="globex")
    _, raw = api_key_create(tenant=tenant, name="default")
    return {"Authorization": f"Bearer {raw}"}


# --- hits and misses -----------------------------------------------------------------------------
async def test_deterministic_request_misses_then_hits_with_saved_cost(gateway, fake_provider_url):
    before = await upstream_calls(fake_provider_url)
    first = await post(gateway.auth, chat(temperature=0))
    second = await post(gateway.auth, chat(temperature=0))
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert await upstream_calls(fake_provider_url) == before + 1
    a, b = first.json(), second.json()
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"] and a["id"] != b["id"]
    miss, hit = await records()
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert miss.cost_usd > 0 and miss.saved_cost_usd == 0 and miss.provider_name == "fake"
    assert hit.cost_usd == 0 and hit.saved_cost_usd == miss.cost_usd and hit.provider_name == ""
    assert hit.response_id == b["id"] and (hit.prompt_tokens, hit.completion_tokens) == (miss.prompt_tokens, miss.completion_tokens)
    assert "x-gateway-provider" not in second.headers


async def test_non_deterministic_request_is_not_cached_unless_asked(gateway, fake_provider_url):
    before = await upstream_calls(fake_provider_url)
    plain = [await post(gateway.auth, chat("Tell me something")) for _ in range(2)]
    assert all("x-gateway-cache" not in r.headers for r in plain)
    assert await upstream_calls(fake_provider_url) == before + 2
    asked = [await post(gateway.auth, chat("Tell me something", cache=True)) for _ in range(2)]
    assert [r.headers["x-gateway-cache"] for r in asked] == ["miss", "hit"]
    header = await post(gateway.auth, chat("Tell me something else"), **{"Cache-Control": "max-age=60"})
    again = await post(gateway.auth, chat("Tell me something else"), **{"Cache-Control": "max-age=60"})
    assert (header.headers["x-gateway-cache"], again.headers["x-gateway-cache"]) == ("miss", "hit")
    assert await upstream_calls(fake_provider_url) == before + 4


async def test_no_store_skips_and_no_cache_refreshes(gateway, fake_provider_url):
    await post(gateway.auth, chat(temperature=0))
    before = await upstream_calls(fake_provider_url)
    skipped = await post(gateway.auth, chat(temperature=0), **{"Cache-Control": "no-store"})
    assert "x-gateway-cache" not in skipped.headers
    off = await post(gateway.auth, chat(temperature=0, cache=False))
    assert "x-gateway-cache" not in off.headers
    fresh = await post(gateway.auth, chat(temperature=0, cache={"no_cache": True}))
    assert fresh.headers["x-gateway-cache"] == "miss"
    assert await upstream_calls(fake_provider_url) == before + 3
    assert (await post(gateway.auth, chat(temperature=0))).headers["x-gateway-cache"] == "hit"


@pytest.mark.parametrize("value, param", [
    ("yes", "cache"), ({"ttl": 0}, "cache.ttl"), ({"ttl": "1"}, "cache.ttl"), ({"forever": True}, "cache.forever"),
    ({"no_store": 1}, "cache.no_store"),
])
async def test_bad_cache_option_is_a_400_naming_it(gateway, value, param):
    response = await post(gateway.auth, chat(cache=value))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_cache_field_is_not_sent_upstream_and_parameters_split_entries(gateway):
    first = await post(gateway.auth, chat(temperature=0, cache={"ttl": 60}))
    other = await post(gateway.auth, chat(temperature=0, max_tokens=3))
    assert (first.status_code, first.headers["x-gateway-cache"]) == (200, "miss")
    assert other.headers["x-gateway-cache"] == "miss"  # max_tokens changes the answer: its own entry
    assert len(other.json()["choices"][0]["message"]["content"].split()) == 3
    streamed_user = await post(gateway.auth, chat(temperature=0, user="someone"))
    assert streamed_user.headers["x-gateway-cache"] == "hit"  # `user` does not change the answer


# --- policies and TTL ----------------------------------------------------------------------------
async def test_tenant_policy_ttl_expires_entries(gateway):
    await sync_to_async(CachePolicy.objects.create)(name="short", tenant=gateway.tenant, mode="exact", ttl_seconds=1)
    body = chat("Short lived answer")  # not deterministic: the policy caches every request
    assert (await post(gateway.auth, body)).headers["x-gateway-cache"] == "miss"
    stored = time.monotonic()
    assert (await post(gateway.auth, body)).headers["x-gateway-cache"] == "hit"
    deadline = time.monotonic() + 5
    while (await post(gateway.auth, body)).headers["x-gateway-cache"] == "hit":
        assert time.monotonic() < deadline, "the entry never expired"
        await asyncio.sleep(0.1)
    assert time.monotonic() - stored >= 0.9


async def test_policy_off_disables_and_rule_policy_beats_tenant_policy(gateway, fake_provider_url):
    from routing.models import RouteGroup, RoutingRule

    await sync_to_async(CachePolicy.objects.create)(name="tenant-off", tenant=gateway.tenant, mode="off")
    response = await post(gateway.auth, chat(temperature=0))
    assert "x-gateway-cache" not in response.headers

    def rule_make():
        group = RouteGroup.objects.create(name="cheap")
        group.deployments.create(provider_model=gateway.provider.models.get(alias="gpt-4o-mini"))
        rule = RoutingRule.objects.create(name="cheap-rule", model="cheap", group=group)
        CachePolicy.objects.create(name="rule-on", tenant=gateway.tenant, rule=rule, mode="exact", ttl_seconds=60)

    await sync_to_async(rule_make)()
    body = {**chat("Routed"), "model": "cheap"}
    assert [(await post(gateway.auth, body)).headers["x-gateway-cache"] for _ in range(2)] == ["miss", "hit"]


# --- streams -------------------------------------------------------------------------------------
async def test_stream_is_replayed_from_a_plain_answer_with_usage_chunk(gateway, fake_provider_url):
    plain = (await post(gateway.auth, chat("Replay me", temperature=0))).json()
    before = await upstream_calls(fake_provider_url)
    response = await post(gateway.auth, chat("Replay me", temperature=0, stream=True, stream_options={"include_usage": True}))
    assert response.headers["x-gateway-cache"] == "hit"
    chunks, done = await sse_chunks(response)
    assert done == "[DONE]"
    assert await upstream_calls(fake_provider_url) == before
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert all(c["object"] == "chat.completion.chunk" and "usage" in c for c in chunks)
    hit = (await records())[-1]
    assert {c["id"] for c in chunks} == {hit.response_id}
    assert (hit.stream, hit.cache, hit.cost_usd) == (True, "hit", 0) and hit.saved_cost_usd > 0


async def test_streamed_answer_is_stored_and_replayed_in_its_own_pieces(gateway, fake_provider_url):
    body = chat("Stream twice", temperature=0, stream=True)
    live = await post(gateway.auth, body)
    assert live.headers["x-gateway-cache"] == "miss"
    live_chunks, _ = await sse_chunks(live)
    before = await upstream_calls(fake_provider_url)
    replay = await post(gateway.auth, body)
    assert replay.headers["x-gateway-cache"] == "hit"
    replay_chunks, done = await sse_chunks(replay)
    assert done == "[DONE]" and await upstream_calls(fake_provider_url) == before

    def pieces(chunks):
        return [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"][0]["delta"].get("content")]

    assert pieces(replay_chunks) == pieces(live_chunks)
    assert all("usage" not in c for c in replay_chunks)
    plain = await post(gateway.auth, chat("Stream twice", temperature=0))
    assert plain.headers["x-gateway-cache"] == "hit"
    assert plain.json()["choices"][0]["message"]["content"] == "".join(pieces(live_chunks))
    miss, hit, plain_hit = await records()
    assert hit.saved_cost_usd == plain_hit.saved_cost_usd == miss.cost_usd > 0


async def test_failed_stream_is_not_stored(gateway):
    body = chat("Cut me [[fake disconnect_after=2]]", temperature=0, stream=True)
    response = await post(gateway.auth, body)
    chunks, last = await sse_chunks(response)
    assert "error" in json.loads(last) or last != "[DONE]"
    assert (await post(gateway.auth, body)).headers["x-gateway-cache"] == "miss"


# --- single flight -------------------------------------------------------------------------------
async def test_ten_identical_concurrent_requests_make_one_upstream_call(gateway, fake_provider_url):
    body = chat("Slow and popular [[fake delay_ms=400]]", temperature=0)
    before = await upstream_calls(fake_provider_url)
    responses = await asyncio.gather(*(post(gateway.auth, body) for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert await upstream_calls(fake_provider_url) == before + 1
    bodies = [r.json() for r in responses]
    assert len({b["id"] for b in bodies}) == 10
    assert len({b["choices"][0]["message"]["content"] for b in bodies}) == 1
    assert sorted(r.headers["x-gateway-cache"] for r in responses) == ["hit"] * 9 + ["miss"]
    rows = await records()
    assert len(rows) == 10 and {r.response_id for r in rows} == {b["id"] for b in bodies}
    [leader] = [r for r in rows if r.cache == "miss"]
    assert all(r.saved_cost_usd == leader.cost_usd and r.cost_usd == 0 for r in rows if r is not leader)
    stats = (await AsyncClient().get("/v1/cache/stats", headers=gateway.auth)).json()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (9, 1, 1)


async def test_followers_share_the_leaders_failure(gateway, fake_provider_url):
    body = chat("Broken [[fake delay_ms=300 status=400]]", temperature=0)
    before = await upstream_calls(fake_provider_url)
    responses = await asyncio.gather(*(post(gateway.auth, body) for _ in range(4)))
    assert [r.status_code for r in responses] == [400] * 4
    assert await upstream_calls(fake_provider_url) == before + 1
    assert (await post(gateway.auth, chat("Broken [[fake status=0]]", temperature=0))).status_code == 200


# --- tenants, stats and clearing -----------------------------------------------------------------
async def test_tenants_never_share_entries_and_clear_only_their_own(gateway, other_tenant, fake_provider_url):
    body = chat("Shared question", temperature=0)
    await post(gateway.auth, body)
    assert (await post(other_tenant, body)).headers["x-gateway-cache"] == "miss"
    assert (await post(other_tenant, body)).headers["x-gateway-cache"] == "hit"
    client = AsyncClient()
    cleared = await client.delete("/v1/cache", headers=other_tenant)
    assert cleared.status_code == 200
    assert cleared.json()["entries"] == 1 and cleared.json()["tenant"] == "globex"
    assert (await post(gateway.auth, body)).headers["x-gateway-cache"] == "hit"
    assert (await post(other_tenant, body)).headers["x-gateway-cache"] == "miss"
    mine = (await client.get("/v1/cache/stats", headers=gateway.auth)).json()
    theirs = (await client.get("/v1/cache/stats", headers=other_tenant)).json()
    assert (mine["tenant"], mine["entries"], mine["hits"], mine["misses"], mine["hit_rate"]) == ("acme", 1, 1, 1, 0.5)
    assert (theirs["entries"], theirs["hits"], theirs["misses"]) == (1, 1, 2)
    assert Decimal(mine["saved_cost_usd"]) > 0


async def test_cache_endpoints_need_a_key_and_the_right_method(gateway):
    client = AsyncClient()
    assert (await client.get("/v1/cache/stats")).status_code == 401
    assert (await client.delete("/v1/cache", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await client.post("/v1/cache", headers=gateway.auth)).status_code == 405
    assert (await client.get("/v1/cache", headers=gateway.auth)).status_code == 405


async def test_redis_down_bypasses_the_cache(gateway, fake_provider_url):
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        before = await upstream_calls(fake_provider_url)
        responses = [await post(gateway.auth, chat("No redis", temperature=0)) for _ in range(2)]
        assert [r.status_code for r in responses] == [200, 200]
        assert [r.headers["x-gateway-cache"] for r in responses] == ["miss", "miss"]
        assert await upstream_calls(fake_provider_url) == before + 2


def test_admin_shows_stats_and_clears_one_tenant(gateway, other_tenant, client, admin_user):
    from asgiref.sync import async_to_sync

    async def fill():
        await post(gateway.auth, chat("Admin", temperature=0))
        await post(other_tenant, chat("Admin", temperature=0))

    async_to_sync(fill)()
    client.force_login(admin_user)
    page = client.get("/admin/caching/cachepolicy/stats/")
    assert page.status_code == 200 and b"globex" in page.content and b"acme" in page.content
    response = client.post(f"/admin/caching/cachepolicy/stats/{gateway.tenant.pk}/clear/")
    assert response.status_code == 302

    async def entries(auth):
        return (await AsyncClient().get("/v1/cache/stats", headers=auth)).json()["entries"]

    assert async_to_sync(entries)(gateway.auth) == 0
    assert async_to_sync(entries)(other_tenant) == 1


async def test_without_redis_the_local_cache_serves_hits_stats_and_clearing(gateway):
    local = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "cache-test"}}
    with override_settings(REDIS_URL="", CACHES=local):
        from caching.store import LocalCacheStore, cache_store

        assert isinstance(cache_store(), LocalCacheStore)
        assert [(await post(gateway.auth, chat("Embedded", temperature=0))).headers["x-gateway-cache"] for _ in range(2)] == ["miss", "hit"]
        client = AsyncClient()
        stats = (await client.get("/v1/cache/stats", headers=gateway.auth)).json()
        assert (stats["entries"], stats["hits"], stats["misses"]) == (1, 1, 1)
        assert (await client.delete("/v1/cache", headers=gateway.auth)).json()["entries"] == 1
        assert (await post(gateway.auth, chat("Embedded", temperature=0))).headers["x-gateway-cache"] == "miss"
