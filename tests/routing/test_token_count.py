"""`/v1/messages/count_tokens` asks the routed deployment's own counter (Anthropic's
`count_tokens`, Gemini's `countTokens`, both served by the real fake provider) and estimates only
otherwise; `x-gateway-token-count` says which."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from accounting.models import UsageRecord
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert
from tests.asgi_client import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "How many tokens are in this question, counted by the vendor?"}]
TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


async def anthropic_post(gateway, path: str, body: dict):
    return await ApiClient().post(path, json.dumps(body), content_type="application/json", headers=gateway.auth)


@sync_to_async
def provider_add(*, name: str, type: str, api_base: str, alias: str) -> None:
    provider = Provider.objects.create(name=name, type=type, api_base=api_base)
    provider_key_upsert(provider=provider, name="default", secret="sk-fake-provider-secret-0003")
    ProviderModel.objects.create(provider=provider, alias=alias, upstream_model=alias,
                                 input_price_per_million="1", output_price_per_million="1")


@pytest.mark.parametrize("extra", [{}, {"system": "Be brief.", "tools": TOOLS}])
async def test_an_anthropic_deployment_counts_with_anthropics_counter(gateway, extra):
    body = {"model": "claude-haiku-4-5", "messages": MESSAGES, **extra}
    counted = await anthropic_post(gateway, "/v1/messages/count_tokens", body)
    assert counted.status_code == 200, counted.content
    assert counted.headers["x-gateway-token-count"] == "provider"
    answered = await anthropic_post(gateway, "/v1/messages", {**body, "max_tokens": 20})
    # exactly what the provider then bills for the same prompt
    assert counted.json()["input_tokens"] == answered.json()["usage"]["input_tokens"]


async def test_a_gemini_deployment_counts_with_gemini_counter(gateway, fake_provider_url):
    await provider_add(name="fake-gemini", type="gemini", api_base=fake_provider_url, alias="gemini-2.5-flash")
    body = {"model": "gemini-2.5-flash", "messages": MESSAGES, "system": "Be brief."}
    counted = await anthropic_post(gateway, "/v1/messages/count_tokens", body)
    assert counted.status_code == 200, counted.content
    assert counted.headers["x-gateway-token-count"] == "provider"
    answered = await anthropic_post(gateway, "/v1/messages", {**body, "max_tokens": 20})
    assert counted.json()["input_tokens"] == answered.json()["usage"]["input_tokens"]


async def test_a_deployment_without_a_counter_is_estimated(gateway):
    counted = await anthropic_post(gateway, "/v1/messages/count_tokens", {"model": "gpt-4o-mini", "messages": MESSAGES})
    assert counted.status_code == 200
    assert counted.headers["x-gateway-token-count"] == "estimate"
    assert counted.json()["input_tokens"] > 0


async def test_a_counter_that_fails_falls_back_to_the_estimate(gateway):
    await provider_add(name="unreachable", type="anthropic", api_base="http://127.0.0.1:9", alias="claude-away")
    counted = await anthropic_post(gateway, "/v1/messages/count_tokens", {"model": "claude-away", "messages": MESSAGES})
    assert counted.status_code == 200
    assert counted.headers["x-gateway-token-count"] == "estimate"
    assert counted.json()["input_tokens"] > 0
    assert await UsageRecord.objects.acount() == 0  # counting is never billed
