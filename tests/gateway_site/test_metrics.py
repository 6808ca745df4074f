"""/metrics in process (one process: the in-memory registry) against the real fake provider.

The registry is global to the test process, so every assertion compares a scrape taken before the
requests with one taken after.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from django.test import AsyncClient, AsyncRequestFactory
from prometheus_client.parser import text_string_to_metric_families

from accounting.budgets import period_start
from accounting.models import Budget, BudgetPeriod
from gateway_site import metrics_scrape
from kernel import metrics
from kernel.loops import background_wait
from routing.breakers import BreakerPolicy, breaker_store
from tests.asgi_client import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def scrape(**extra) -> str:
    response = await AsyncClient().get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.content.decode()


async def from_address(address: str, headers: dict | None = None):
    """The view itself, for a peer address the test client cannot take."""
    request = AsyncRequestFactory().get("/metrics", headers=headers or {})
    request.META["REMOTE_ADDR"] = address
    return await metrics_scrape.metrics_view(request)


async def chat(gateway, content: str, **extra):
    body = json.dumps({"model": extra.pop("model", "gpt-4o-mini"),
                       "messages": [{"role": "user", "content": content}], **extra})
    return await ApiClient().post(
        "/v1/chat/completions", body, content_type="application/json", headers=gateway.auth
    )


async def test_requests_errors_tokens_cost_and_latency_change_as_requests_pass(gateway):
    before = await scrape()
    assert (await chat(gateway, "Hello")).status_code == 200
    assert (await chat(gateway, "[[fake status=500]]")).status_code == 502
    stream = await chat(gateway, "Stream me", stream=True)
    stream.content
    after = await scrape()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    acme = {"tenant": "acme", "model": "gpt-4o-mini", "provider": "fake"}
    assert delta("gateway_requests_total", status="success", **acme) == 2
    assert delta("gateway_requests_total", status="error", **acme) == 1
    assert delta("gateway_request_errors_total", error_class="upstream_server", **acme) == 1
    assert delta("gateway_tokens_total", kind="prompt", **acme) > 0
    assert delta("gateway_tokens_total", kind="completion", **acme) > 0
    assert delta("gateway_cost_usd_total", **acme) > 0
    assert delta("gateway_request_duration_seconds_count", model="gpt-4o-mini", provider="fake") == 3
    assert delta("gateway_request_duration_seconds_count", stream="true") == 1
    assert delta("gateway_time_to_first_token_seconds_count", model="gpt-4o-mini") == 1
    assert delta("gateway_provider_attempts_total", provider="fake", status="success") == 2
    # The 500 is retried once (the default) before the request fails: two failed attempts.
    assert delta("gateway_provider_attempts_total", provider="fake", error_class="upstream_server") == 2
    assert delta("gateway_http_responses_total", route="v1/chat/completions", status="200") == 2


async def test_a_model_the_gateway_does_not_know_is_not_a_label(gateway):
    before = await scrape()
    assert (await chat(gateway, "Hi", model="made-up-model-1234")).status_code == 404
    after = await scrape()
    assert "made-up-model-1234" not in after
    assert value(after, "gateway_requests_total", tenant="acme", model="-", status="error") == (
        value(before, "gateway_requests_total", tenant="acme", model="-", status="error") + 1
    )


async def test_failed_authentication_is_counted_by_route_and_status(gateway):
    before = await scrape()
    response = await ApiClient().post(
        "/v1/chat/completions", "{}", content_type="application/json",
        headers={"Authorization": "Bearer sk-gw-wrong"},
    )
    assert response.status_code == 401
    after = await scrape()
    labels = {"method": "POST", "route": "v1/chat/completions", "status": "401"}
    assert value(after, "gateway_http_responses_total", **labels) == (
        value(before, "gateway_http_responses_total", **labels) + 1
    )


async def test_cache_lookups_are_counted_for_the_caching_app(db):
    before = await scrape()
    metrics.cache_lookup("acme", "exact", True)
    metrics.cache_lookup("acme", "exact", False)
    metrics.cache_lookup("acme", "semantic", True)
    after = await scrape()
    for kind, result in (("exact", "hit"), ("exact", "miss"), ("semantic", "hit")):
        labels = {"tenant": "acme", "kind": kind, "result": result}
        assert value(after, "gateway_cache_lookups_total", **labels) == (
            value(before, "gateway_cache_lookups_total", **labels) + 1
        )


async def test_breaker_states_are_read_at_scrape_time(gateway):
    assert (await chat(gateway, "Hello")).status_code == 200
    await background_wait()  # the health sample, written in the background
    text = await scrape()
    assert value(text, "gateway_circuit_breaker_state", provider="fake", model="gpt-4o-mini") == 0
    assert value(text, "gateway_deployment_success_ratio", provider="fake", model="gpt-4o-mini") == 1
    samples = [
        s for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == "gateway_circuit_breaker_state" and s.labels["model"] == "gpt-4o-mini"
    ]
    [key] = {s.labels["deployment"] for s in samples}
    policy = BreakerPolicy.default()
    for _ in range(policy.failure_threshold):
        await breaker_store().record_failure(key, policy=policy)
    text = await scrape()
    assert value(text, "gateway_circuit_breaker_state", deployment=key) == 2
    assert value(text, "gateway_metrics_scrape_error", section="deployments") == 0


async def test_budget_utilisation_is_read_at_scrape_time(gateway):
    budget = await Budget.objects.acreate(tenant=gateway.tenant, amount_usd=Decimal("10"), period="monthly")
    await BudgetPeriod.objects.acreate(
        budget=budget, period_start=period_start("monthly", datetime.now(timezone.utc)),
        spent_usd=Decimal("2.5"), reserved_usd=Decimal("0.5"),
    )
    text = await scrape()
    labels = {"tenant": "acme", "scope": "tenant", "period": "monthly", "hard": "true"}
    assert value(text, "gateway_budget_utilisation_ratio", **labels) == pytest.approx(0.25)
    assert value(text, "gateway_budget_spent_usd", **labels) == pytest.approx(2.5)
    assert value(text, "gateway_budget_reserved_usd", **labels) == pytest.approx(0.5)
    assert value(text, "gateway_budget_limit_usd", **labels) == pytest.approx(10)


async def test_metrics_refuse_other_addresses_and_proxied_requests(db):
    assert (await from_address("10.1.2.3")).status_code == 403
    proxied = await AsyncClient().get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert proxied.status_code == 403
    assert proxied.json()["error"]["code"] == "metrics_forbidden"


async def test_metrics_token_opens_them_from_anywhere(db, settings):
    settings.GATEWAY_METRICS_TOKEN = "metrics-token-0123456789"
    settings.GATEWAY_METRICS_ALLOW_IPS = []
    client = AsyncClient()
    assert (await client.get("/metrics")).status_code == 403
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer metrics-token-wrong"})
    assert wrong.status_code == 403
    right = await from_address(
        "203.0.113.9",
        headers={"Authorization": "Bearer metrics-token-0123456789", "X-Forwarded-For": "198.51.100.1"},
    )
    assert right.status_code == 200
    assert "gateway_requests_total" in right.content.decode()


async def test_allow_list_takes_networks(db, settings):
    settings.GATEWAY_METRICS_ALLOW_IPS = ["10.0.0.0/8"]
    assert (await from_address("10.20.30.40")).status_code == 200
    assert (await AsyncClient().get("/metrics")).status_code == 403  # loopback no longer listed
