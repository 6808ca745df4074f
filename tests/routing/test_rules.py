"""Routing rules and client hints, through the real API in process against the real fake provider.

The `gateway` fixture gives two providers on the fake: "fake" (gpt-4o-mini, cheap) and
"fake-anthropic" (claude-haiku-4-5, dearer). The responses' x-gateway-provider and
x-gateway-route headers show which deployment served a request and which rule chose it.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from tests.asgi_client import ApiClient

from accounting.services import api_key_create, tenant_create
from providers.models import ProviderModel
from routing.models import Deployment, RouteGroup, RoutingRule

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI = ("fake", "gpt-4o-mini")
ANTHROPIC = ("fake-anthropic", "claude-haiku-4-5")


def group_create(name: str, *members: tuple[str, str], strategy: str = "fallback") -> RouteGroup:
    """A route group whose members, (provider, alias), get priorities in the order given."""
    group = RouteGroup.objects.create(name=name, strategy=strategy, retries=0)
    for priority, (provider, alias) in enumerate(members):
        model = ProviderModel.objects.get(provider__name=provider, alias=alias)
        Deployment.objects.create(group=group, provider_model=model, priority=priority)
    return group


def rule_create(name: str, group: RouteGroup, *, model: str = "smart", tenants=(), api_keys=(),
                **fields) -> RoutingRule:
    rule = RoutingRule.objects.create(name=name, model=model, group=group, **fields)
    rule.tenants.set(tenants)
    rule.api_keys.set(api_keys)
    return rule


@sync_to_async
def route(name: str, *members: tuple[str, str], strategy: str = "fallback", **rule_fields) -> RoutingRule:
    """A rule named `name` sending its model to a new group of `members`."""
    return rule_create(name, group_create(f"{name}-group", *members, strategy=strategy), **rule_fields)


@pytest.fixture
async def other(gateway):
    """A second tenant, "globex", with its own key: (tenant, raw key)."""
    def make():
        tenant = tenant_create(slug="globex", name="Globex")
        return tenant, api_key_create(tenant=tenant, name="default")[1]

    return await sync_to_async(make)()


async def ask(raw_key: str, *, model: str = "smart", headers: dict | None = None, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], **extra}
    return await ApiClient().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json",
        headers={"Authorization": f"Bearer {raw_key}", **(headers or {})},
    )


def served(response) -> tuple[int, str, str]:
    """(status, provider, rule) of a response; provider and rule are "" when absent."""
    return response.status_code, response.headers.get("x-gateway-provider", ""), response.headers.get("x-gateway-route", "")


def error_of(response) -> dict:
    return response.json()["error"]


async def list_models(raw_key: str) -> dict[str, str]:
    response = await ApiClient().get("/v1/models", headers={"Authorization": f"Bearer {raw_key}"})
    assert response.status_code == 200
    return {entry["id"]: entry["owned_by"] for entry in response.json()["data"]}


# --- rules ---------------------------------------------------------------------------------------
async def test_without_a_rule_a_virtual_alias_is_unknown(gateway):
    response = await ask(gateway.raw_key)
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"


async def test_a_rule_routes_a_virtual_alias_to_its_group(gateway):
    await route("smart-rule", ANTHROPIC, OPENAI)
    response = await ask(gateway.raw_key)
    assert served(response) == (200, "fake-anthropic", "smart-rule")
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("first_priority, winner", [(10, "z-first"), (30, "a-second")])
async def test_rules_are_tried_in_priority_order(gateway, first_priority, winner):
    # Names sort the other way round from priorities 10 and 20, so only priority picks "z-first".
    await route("z-first", OPENAI, priority=first_priority)
    await route("a-second", ANTHROPIC, priority=20)
    provider = "fake" if winner == "z-first" else "fake-anthropic"
    assert served(await ask(gateway.raw_key)) == (200, provider, winner)


async def test_a_tenant_scoped_virtual_alias_is_unknown_to_other_tenants(gateway, other):
    _, other_key = other
    await route("acme-smart", OPENAI, tenants=[gateway.tenant])
    assert served(await ask(gateway.raw_key)) == (200, "fake", "acme-smart")
    response = await ask(other_key)
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"


async def test_a_tenant_scoped_rule_on_a_real_alias_leaves_others_on_the_implicit_route(gateway, other):
    _, other_key = other
    await route("acme-mini", ANTHROPIC, model="gpt-4o-mini", tenants=[gateway.tenant])
    assert served(await ask(gateway.raw_key, model="gpt-4o-mini")) == (200, "fake-anthropic", "acme-mini")
    assert served(await ask(other_key, model="gpt-4o-mini")) == (200, "fake", "")


async def test_a_key_scoped_rule_matches_only_that_key(gateway):
    second_key, second_raw = await sync_to_async(api_key_create)(tenant=gateway.tenant, name="second")
    await route("second-only", OPENAI, api_keys=[second_key])
    assert served(await ask(second_raw)) == (200, "fake", "second-only")
    assert (await ask(gateway.raw_key)).status_code == 404


async def test_task_matches_metadata_task_and_the_task_header(gateway):
    await route("smart-summaries", ANTHROPIC, task="summarization", priority=10)
    await route("smart-default", OPENAI, priority=100)
    assert served(await ask(gateway.raw_key)) == (200, "fake", "smart-default")
    by_metadata = await ask(gateway.raw_key, metadata={"task": "summarization"})
    assert served(by_metadata) == (200, "fake-anthropic", "smart-summaries")
    by_header = await ask(gateway.raw_key, headers={"X-Gateway-Task": "summarization"})
    assert served(by_header) == (200, "fake-anthropic", "smart-summaries")
    other_task = await ask(gateway.raw_key, metadata={"task": "translation"})
    assert served(other_task) == (200, "fake", "smart-default")


async def test_a_task_rule_alone_does_not_serve_requests_without_the_task(gateway):
    await route("smart-summaries", OPENAI, task="summarization")
    assert (await ask(gateway.raw_key)).status_code == 404
    assert (await ask(gateway.raw_key, metadata={"task": "summarization"})).status_code == 200


@pytest.mark.parametrize(
    "extra, headers, rule",
    [
        ({"metadata": {"tags": "a,b"}}, {}, "tagged"),
        ({"metadata": {"tags": " b , a ,extra"}}, {}, "tagged"),
        ({}, {"X-Gateway-Tags": "a,b"}, "tagged"),
        ({"metadata": {"tags": "a"}}, {}, "untagged"),
        ({"metadata": {"tags": "b,c"}}, {}, "untagged"),
        ({}, {}, "untagged"),
    ],
)
async def test_tags_must_all_be_present(gateway, extra, headers, rule):
    await route("tagged", ANTHROPIC, tags=["a", "b"], priority=10)
    await route("untagged", OPENAI, priority=100)
    response = await ask(gateway.raw_key, headers=headers, **extra)
    assert response.status_code == 200 and response.headers["x-gateway-route"] == rule


async def test_provider_and_model_bypasses_the_rules(gateway):
    await route("mini-elsewhere", ANTHROPIC, model="gpt-4o-mini")
    # Even a rule written for the literal "fake:gpt-4o-mini" cannot take it elsewhere.
    await route("explicit-elsewhere", ANTHROPIC, model="fake:gpt-4o-mini")
    assert served(await ask(gateway.raw_key, model="gpt-4o-mini")) == (200, "fake-anthropic", "mini-elsewhere")
    response = await ask(gateway.raw_key, model="fake:gpt-4o-mini")
    assert served(response) == (200, "fake", "")
    assert response.headers["x-gateway-model"] == "gpt-4o-mini-2024-07-18"


async def test_a_disabled_rule_is_ignored(gateway):
    await route("off", ANTHROPIC, priority=10, enabled=False)
    await route("on", OPENAI, priority=20)
    await route("dormant-off", OPENAI, model="dormant", enabled=False)
    assert served(await ask(gateway.raw_key)) == (200, "fake", "on")
    assert (await ask(gateway.raw_key, model="dormant")).status_code == 404


async def test_saving_a_rule_takes_effect_on_the_next_request(gateway, settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 3600  # only the save can make the table fresh
    anthropic_only = await sync_to_async(group_create)("anthropic-only", ANTHROPIC)
    rule = await route("smart-rule", OPENAI)
    assert served(await ask(gateway.raw_key)) == (200, "fake", "smart-rule")
    rule.group = anthropic_only  # nothing but the rule's own save happens from here on
    await rule.asave()
    assert served(await ask(gateway.raw_key)) == (200, "fake-anthropic", "smart-rule")
    rule.enabled = False
    await rule.asave()
    assert (await ask(gateway.raw_key)).status_code == 404


async def test_creating_a_rule_takes_effect_on_the_next_request(gateway, settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 3600
    assert (await ask(gateway.raw_key)).status_code == 404
    await route("smart-rule", OPENAI)
    assert served(await ask(gateway.raw_key)) == (200, "fake", "smart-rule")


async def test_changing_a_rules_tenants_takes_effect_on_the_next_request(gateway, other, settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = 3600
    other_tenant, _ = other
    rule = await route("smart-rule", OPENAI)
    assert (await ask(gateway.raw_key)).status_code == 200
    await sync_to_async(rule.tenants.set)([other_tenant])
    assert (await ask(gateway.raw_key)).status_code == 404


# --- hints ---------------------------------------------------------------------------------------
async def test_exclude_removes_a_provider(gateway):
    await route("smart-rule", OPENAI, ANTHROPIC)
    assert served(await ask(gateway.raw_key)) == (200, "fake", "smart-rule")
    excluded = await ask(gateway.raw_key, routing={"exclude": ["fake"]})
    assert served(excluded) == (200, "fake-anthropic", "smart-rule")
    by_header = await ask(gateway.raw_key, headers={"X-Gateway-Exclude": "fake"})
    assert served(by_header) == (200, "fake-anthropic", "smart-rule")


@pytest.mark.parametrize(
    "extra, headers",
    [
        ({"routing": {"exclude": ["fake", "fake-anthropic"]}}, {}),
        ({}, {"X-Gateway-Exclude": "fake-anthropic, fake"}),
    ],
)
async def test_excluding_every_provider_is_a_400(gateway, extra, headers):
    await route("smart-rule", OPENAI, ANTHROPIC)
    response = await ask(gateway.raw_key, headers=headers, **extra)
    assert response.status_code == 400
    assert error_of(response)["param"] == "routing.exclude"


async def test_prefer_puts_a_provider_first(gateway):
    await route("smart-rule", OPENAI, ANTHROPIC)
    preferred = await ask(gateway.raw_key, routing={"prefer": ["fake-anthropic"]})
    assert served(preferred) == (200, "fake-anthropic", "smart-rule")
    by_header = await ask(gateway.raw_key, headers={"X-Gateway-Prefer": "fake-anthropic"})
    assert served(by_header) == (200, "fake-anthropic", "smart-rule")


async def test_prefer_cannot_reach_outside_the_route(gateway):
    await route("smart-rule", OPENAI)
    response = await ask(gateway.raw_key, routing={"prefer": ["fake-anthropic"]})
    assert served(response) == (200, "fake", "smart-rule")


async def test_strategy_hint_overrides_the_groups(gateway):
    # Fallback tries the dear Anthropic deployment first; lowest_cost the cheap OpenAI one.
    await route("smart-rule", ANTHROPIC, OPENAI, strategy="fallback")
    assert served(await ask(gateway.raw_key)) == (200, "fake-anthropic", "smart-rule")
    cheapest = await ask(gateway.raw_key, routing={"strategy": "lowest_cost"})
    assert served(cheapest) == (200, "fake", "smart-rule")
    by_header = await ask(gateway.raw_key, headers={"X-Gateway-Strategy": "lowest_cost"})
    assert served(by_header) == (200, "fake", "smart-rule")


@pytest.mark.parametrize(
    "extra, headers",
    [({"routing": {"strategy": "fastest"}}, {}), ({}, {"X-Gateway-Strategy": "fastest"})],
)
async def test_an_unknown_strategy_is_a_400(gateway, extra, headers):
    await route("smart-rule", OPENAI)
    response = await ask(gateway.raw_key, headers=headers, **extra)
    assert response.status_code == 400
    assert error_of(response)["param"] == "routing.strategy"
    assert "fastest" in error_of(response)["message"]


@pytest.mark.parametrize(
    "routing, param",
    [
        ("fast", "routing"),
        (["fake"], "routing"),
        ({"fastest": True}, "routing.fastest"),
        ({"prefer": "fake"}, "routing.prefer"),
        ({"exclude": [1]}, "routing.exclude"),
        ({"strategy": 3}, "routing.strategy"),
    ],
)
async def test_a_bad_routing_object_is_a_400_naming_the_param(gateway, routing, param):
    await route("smart-rule", OPENAI)
    response = await ask(gateway.raw_key, routing=routing)
    assert response.status_code == 400
    assert error_of(response)["param"] == param


# --- keys and the model list ---------------------------------------------------------------------
async def test_a_key_not_allowed_the_virtual_alias_gets_403(gateway):
    await route("smart-rule", OPENAI)
    _, limited = await sync_to_async(api_key_create)(
        tenant=gateway.tenant, name="mini-only", allowed_models=["gpt-4o-mini"]
    )
    response = await ask(limited)
    assert response.status_code == 403
    assert error_of(response)["code"] == "model_not_allowed"
    _, allowed = await sync_to_async(api_key_create)(
        tenant=gateway.tenant, name="smart-only", allowed_models=["smart"]
    )
    assert served(await ask(allowed)) == (200, "fake", "smart-rule")


async def test_models_lists_the_virtual_alias_for_admitted_tenants_only(gateway, other):
    _, other_key = other
    await route("acme-smart", OPENAI, tenants=[gateway.tenant])
    await route("off", OPENAI, model="dormant", enabled=False)
    mine = await list_models(gateway.raw_key)
    assert mine["smart"] == "gateway"
    assert mine["gpt-4o-mini"] == "fake" and mine["claude-haiku-4-5"] == "fake-anthropic"
    assert "dormant" not in mine
    theirs = await list_models(other_key)
    assert "smart" not in theirs and "gpt-4o-mini" in theirs


async def test_models_hides_the_virtual_alias_from_a_key_not_allowed_it(gateway):
    await route("smart-rule", OPENAI)
    _, limited = await sync_to_async(api_key_create)(
        tenant=gateway.tenant, name="mini-only", allowed_models=["gpt-4o-mini"]
    )
    assert set(await list_models(limited)) == {"gpt-4o-mini"}


async def test_route_header_names_the_rule_and_is_absent_without_one(gateway):
    await route("smart-rule", OPENAI)
    assert (await ask(gateway.raw_key)).headers["x-gateway-route"] == "smart-rule"
    assert "x-gateway-route" not in (await ask(gateway.raw_key, model="gpt-4o-mini")).headers
