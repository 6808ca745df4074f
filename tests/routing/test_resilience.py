"""Retries, timeouts, failover and circuit breakers, against two real fake-provider processes.

fake-a is made to misbehave with a server-wide directive; fake-b keeps serving. The fakes count
requests, so a test can prove which provider was (or was not) called.
"""

from __future__ import annotations

import json
import sys
import time

import httpx
import pytest
from asgiref.sync import sync_to_async
from tests.asgi_client import ApiClient

from accounting.models import UsageRecord
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert
from routing.breakers import breaker_store
from routing.models import Deployment, RouteGroup, RoutingRule
from tests.conftest import free_port, start_process, stop_process

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def fake_pair():
    """Two fake providers in their own processes: {'fake-a': url, 'fake-b': url}."""
    processes, urls = [], {}
    for name in ("fake-a", "fake-b"):
        port = free_port()
        processes.append(start_process(
            [sys.executable, "manage.py", "fake_provider", "--port", str(port)], ready="listening"
        ))
        urls[name] = f"http://127.0.0.1:{port}"
    yield urls
    for process in processes:
        stop_process(process)


class Fake:
    def __init__(self, url: str) -> None:
        self.url = url

    async def misbehave(self, directive: str) -> None:
        async with httpx.AsyncClient() as client:
            (await client.put(f"{self.url}/_fake/directive", json={"directive": directive})).raise_for_status()

    async def requests(self) -> int:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{self.url}/_fake/stats")).json()["requests"]

    async def reset(self) -> None:
        async with httpx.AsyncClient() as client:
            (await client.post(f"{self.url}/_fake/reset")).raise_for_status()


@pytest.fixture
async def fakes(fake_pair):
    pair = {name: Fake(url) for name, url in fake_pair.items()}
    for fake in pair.values():
        await fake.reset()
    yield pair
    for fake in pair.values():
        await fake.reset()


def _route(gateway, fake_pair, *, strategy="fallback", retries=0, attempt_timeout=None,
           threshold=2, cooldown=60.0, model="smart") -> RouteGroup:
    group = RouteGroup.objects.create(
        name=f"{model}-group", strategy=strategy, retries=retries,
        attempt_timeout_seconds=attempt_timeout, total_timeout_seconds=20,
        breaker_failure_threshold=threshold, breaker_cooldown_seconds=cooldown,
    )
    for priority, name in enumerate(("fake-a", "fake-b")):
        provider = Provider.objects.create(name=name, type="openai", api_base=f"{fake_pair[name]}/v1")
        provider_key_upsert(provider=provider, name="default", secret=f"sk-{name}")
        model_row = ProviderModel.objects.create(
            provider=provider, alias="gpt-4o-mini", upstream_model="gpt-4o-mini",
            input_price_per_million="0.15", output_price_per_million="0.60", context_window=128000,
        )
        Deployment.objects.create(group=group, provider_model=model_row, priority=priority, weight=1)
    RoutingRule.objects.create(name=f"{model}-rule", model=model, group=group)
    return group


@pytest.fixture
async def route(gateway, fake_pair):
    async def make(**options) -> RouteGroup:
        return await sync_to_async(_route)(gateway, fake_pair, **options)

    return make


async def ask(gateway, content: str = "Hello", *, model: str = "smart", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return await ApiClient().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", headers=gateway.auth
    )


async def last_record() -> UsageRecord:
    return await UsageRecord.objects.order_by("-created_at").afirst()


async def test_server_errors_fail_over_to_the_next_deployment(gateway, route, fakes):
    await route(retries=1)
    await fakes["fake-a"].misbehave("status=500")
    response = await ask(gateway)
    assert response.status_code == 200
    assert response.headers["x-gateway-provider"] == "fake-b"
    assert response.headers["x-gateway-route"] == "smart-rule"
    record = await last_record()
    assert [(a["provider"], a["status"]) for a in record.attempts] == [
        ("fake-a", "error"), ("fake-a", "error"), ("fake-b", "success")
    ]
    assert await fakes["fake-a"].requests() == 2


async def test_rate_limit_retry_after_is_honoured_before_retrying(gateway, route, fakes):
    await route(retries=1)
    await fakes["fake-a"].misbehave("status=429 retry_after=1")
    started = time.monotonic()
    response = await ask(gateway)
    elapsed = time.monotonic() - started
    assert response.headers["x-gateway-provider"] == "fake-b"
    record = await last_record()
    assert [a["error_class"] for a in record.attempts[:2]] == ["rate_limited", "rate_limited"]
    assert elapsed >= 1.0  # waited the provider's retry-after before the second attempt


async def test_long_retry_after_moves_on_without_waiting(gateway, route, fakes):
    await route(retries=3)
    await fakes["fake-a"].misbehave("status=429 retry_after=60")
    started = time.monotonic()
    response = await ask(gateway)
    assert response.headers["x-gateway-provider"] == "fake-b"
    assert time.monotonic() - started < 5
    assert await fakes["fake-a"].requests() == 1


async def test_attempt_timeout_fails_over(gateway, route, fakes):
    await route(attempt_timeout=0.5)
    await fakes["fake-a"].misbehave("delay_ms=5000")
    response = await ask(gateway)
    assert response.status_code == 200 and response.headers["x-gateway-provider"] == "fake-b"
    record = await last_record()
    assert record.attempts[0]["error_class"] == "timeout"
    assert record.latency_ms < 3000


async def test_slow_first_token_fails_over_invisibly(gateway, route, fakes):
    await route(attempt_timeout=0.5)
    await fakes["fake-a"].misbehave("ttft_ms=5000")
    response = await ask(gateway, stream=True)
    assert response.status_code == 200 and response.headers["x-gateway-provider"] == "fake-b"
    raw = response.content.decode()
    assert raw.rstrip().endswith("data: [DONE]") and '"error"' not in raw
    record = await last_record()
    assert [a["provider"] for a in record.attempts] == ["fake-a", "fake-b"]
    assert record.status == "success"


async def test_tenant_errors_are_not_retried_or_failed_over(gateway, route, fakes):
    await route(retries=2)
    response = await ask(gateway, "[[fake status=400]]")
    assert response.status_code == 400
    assert await fakes["fake-a"].requests() == 1 and await fakes["fake-b"].requests() == 0


async def context_window_set(*, provider: str, tokens: int) -> None:
    """As the admin changes it: save() raises the configuration generation (an update() would not)."""
    async for model in ProviderModel.objects.filter(provider__name=provider):
        model.context_window = tokens
        await model.asave(update_fields=["context_window"])


async def test_context_length_goes_to_a_larger_context_window(gateway, route, fakes):
    await route()
    await context_window_set(provider="fake-a", tokens=8000)
    await fakes["fake-a"].misbehave("context_length_exceeded")
    response = await ask(gateway)
    assert response.status_code == 200 and response.headers["x-gateway-provider"] == "fake-b"
    await context_window_set(provider="fake-b", tokens=4000)
    await fakes["fake-a"].reset()
    await fakes["fake-a"].misbehave("context_length_exceeded")
    response = await ask(gateway)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert await fakes["fake-b"].requests() == 1  # the smaller window was not tried


async def test_breaker_opens_moves_traffic_half_opens_and_closes(gateway, route, fakes):
    now = [1_000_000.0]
    store = breaker_store()
    store.clock = lambda: now[0]
    await route(threshold=2, cooldown=30)
    await fakes["fake-a"].misbehave("status=500")
    for _ in range(2):
        assert (await ask(gateway)).headers["x-gateway-provider"] == "fake-b"
    assert await fakes["fake-a"].requests() == 2
    # Open: fake-a is skipped without being called.
    response = await ask(gateway)
    assert response.headers["x-gateway-provider"] == "fake-b" and response.headers["x-gateway-attempts"] == "1"
    assert await fakes["fake-a"].requests() == 2
    assert (await last_record()).attempts[0]["reason"] == "breaker_open"
    # Cooldown over, fake-a healthy again: one probe closes the breaker.
    await fakes["fake-a"].reset()
    now[0] += 31
    assert (await ask(gateway)).headers["x-gateway-provider"] == "fake-a"
    assert (await ask(gateway)).headers["x-gateway-provider"] == "fake-a"
    key = (await last_record()).attempts[0]["deployment"]
    status = await store.status(key, policy=(await _policy()))
    assert status.state == "closed" and status.failures == 0


async def test_failed_probe_reopens_the_breaker(gateway, route, fakes):
    now = [2_000_000.0]
    store = breaker_store()
    store.clock = lambda: now[0]
    await route(threshold=1, cooldown=30)
    await fakes["fake-a"].misbehave("status=503")
    await ask(gateway)
    now[0] += 31
    await ask(gateway)  # the probe fails
    assert await fakes["fake-a"].requests() == 2
    await ask(gateway)  # open again: not called
    assert await fakes["fake-a"].requests() == 2


async def test_all_breakers_open_is_503_with_retry_after(gateway, route, fakes):
    await route(threshold=1, cooldown=30)
    for fake in fakes.values():
        await fake.misbehave("status=500")
    assert (await ask(gateway)).status_code == 502
    response = await ask(gateway)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_deployment_available"
    assert 1 <= int(response.headers["retry-after"]) <= 30


async def _policy():
    from routing.selectors import routing_table_get

    table = await routing_table_get()
    return table.rules[0].group.policy
