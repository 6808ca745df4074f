"""A key's model allow-list holds at every door, whatever form the model is asked in.

The allow-list names aliases. `provider:name` matches a provider's aliases and upstream names
alike, so one name can resolve to deployments of several aliases: here "fake:premium" names both
the allowed alias "house" (its upstream model is called "premium") and the disallowed alias
"premium" on the same provider. The disallowed deployment was created first, so the fallback
order tries it first: a plan that kept it would be served by it ("premium-large"). The same for
embeddings with "vectors" (upstream "vectors-pro") and "vectors-pro". A second provider, "fake-b",
serves "premium" too.
"""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from tests.asgi_client import ApiClient

from accounting.models import UsageRecord
from gateway_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

ALLOWED_UPSTREAM = "premium"  # the upstream model of the allowed alias "house"
ALLOWED_EMBEDDING_UPSTREAM = "vectors-pro"  # of the allowed alias "vectors"
REFUSED_FORMS = ["premium", "fake:premium-large", "fake-b:premium"]


@pytest.fixture
def limited(gateway) -> str:
    """The raw key of a key allowed only "house" and "vectors"."""
    from accounting.services import api_key_create
    from providers.models import Provider, ProviderModel
    from providers.services import provider_key_upsert

    fake = gateway.provider
    for alias, upstream, mode, price in (
        ("premium", "premium-large", "chat", "0.10"),  # cheaper: lowest_cost would pick it too
        ("vectors-pro", "vectors-large", "embedding", "0.01"),
        ("house", ALLOWED_UPSTREAM, "chat", "3.00"),
        ("vectors", ALLOWED_EMBEDDING_UPSTREAM, "embedding", "0.50"),
    ):
        ProviderModel.objects.create(provider=fake, alias=alias, upstream_model=upstream, mode=mode,
                                     input_price_per_million=price, output_price_per_million=price)
    other = Provider.objects.create(name="fake-b", type="openai", api_base=fake.api_base)
    provider_key_upsert(provider=other, name="default", secret="sk-fake-provider-secret-0003")
    ProviderModel.objects.create(provider=other, alias="premium", upstream_model="premium",
                                 input_price_per_million="0.10", output_price_per_million="0.10")
    return api_key_create(tenant=gateway.tenant, name="house-only", allowed_models=["house", "vectors"])[1]


async def post(raw_key: str, path: str, body: dict, **headers):
    return await ApiClient().post(path, json.dumps(body), content_type="application/json",
                                    headers={"Authorization": f"Bearer {raw_key}", **headers})


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hello"}], **extra}


async def served_model() -> str:
    return (await UsageRecord.objects.order_by("-created_at").afirst()).served_model


@pytest.mark.parametrize(
    "model, headers, extra",
    [
        ("house", {}, {}),
        ("fake:house", {}, {}),
        ("fake:premium", {}, {}),  # the upstream name of "house", and the alias "premium"
        ("fake:premium", {"x-gateway-strategy": "lowest_cost"}, {}),
        ("fake:premium", {"x-gateway-prefer": "fake"}, {"routing": {"strategy": "lowest_cost"}}),
        ("fake:premium", {}, {"stream": True}),
    ],
    ids=["alias", "provider-alias", "provider-upstream", "strategy-header", "routing-body", "stream"],
)
async def test_chat_serves_only_the_allowed_alias(limited, model, headers, extra):
    response = await post(limited, "/v1/chat/completions", chat(model, **extra), **headers)
    assert response.status_code == 200, response.content
    if extra.get("stream"):
        response.content  # the record is written at the end
    assert await served_model() == ALLOWED_UPSTREAM


@pytest.mark.parametrize("model", REFUSED_FORMS)
async def test_chat_refuses_the_disallowed_alias_in_every_form(limited, model):
    response = await post(limited, "/v1/chat/completions", chat(model), **{"x-gateway-prefer": "fake-b"})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "model_not_allowed" and error["param"] == "model" and model in error["message"]


async def test_messages_serves_only_the_allowed_alias(limited):
    body = chat("fake:premium", max_tokens=20)
    answer = await post(limited, "/v1/messages", body, **{"x-gateway-strategy": "lowest_cost"})
    assert answer.status_code == 200, answer.content
    assert answer.json()["model"] == ALLOWED_UPSTREAM and await served_model() == ALLOWED_UPSTREAM
    for model in REFUSED_FORMS:
        refused = await post(limited, "/v1/messages", body | {"model": model})
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
        counted = await post(limited, "/v1/messages/count_tokens", {"model": model, "messages": body["messages"]})
        assert counted.status_code == 403


async def test_embeddings_serve_only_the_allowed_alias(limited):
    for model in ("vectors", "fake:vectors", "fake:vectors-pro"):
        answer = await post(limited, "/v1/embeddings", {"model": model, "input": "hello"})
        assert answer.status_code == 200, answer.content
        assert await served_model() == ALLOWED_EMBEDDING_UPSTREAM
    for model in ("vectors-pro", "fake:vectors-large"):
        refused = await post(limited, "/v1/embeddings", {"model": model, "input": "hello"})
        assert refused.status_code == 403 and refused.json()["error"]["param"] == "model"


async def test_websocket_serves_only_the_allowed_alias(limited):
    socket = WebsocketCommunicator(application, "/v1/ws/chat",
                                   headers=[(b"authorization", f"Bearer {limited}".encode())])
    assert (await socket.connect())[0]
    assert (await socket.receive_json_from(timeout=10))["type"] == "auth.ok"
    hinted = chat("fake:premium", routing={"strategy": "lowest_cost"})
    await socket.send_json_to({"type": "chat.request", "id": "ok", **hinted})
    await socket.send_json_to({"type": "chat.request", "id": "no", **chat("fake-b:premium")})
    events = {}
    while len(events) < 2:
        event = await socket.receive_json_from(timeout=10)
        if event["type"] in ("chat.done", "error"):
            events[event["id"]] = event
    assert events["ok"]["type"] == "chat.done" and events["ok"]["model"] == ALLOWED_UPSTREAM
    assert events["no"]["type"] == "error" and events["no"]["error"]["code"] == "model_not_allowed"
    await socket.disconnect()


async def test_models_lists_the_allowed_aliases_only(limited):
    response = await ApiClient().get("/v1/models", headers={"Authorization": f"Bearer {limited}"})
    assert {entry["id"] for entry in response.json()["data"]} == {"house", "vectors"}


async def test_a_rule_is_reached_by_its_published_name_only(gateway, limited):
    """A rule's model name is what the operator published: a key allowed that name reaches the
    rule's deployments whatever their alias; a key allowed only their alias does not reach it."""
    from asgiref.sync import sync_to_async

    from accounting.services import api_key_create
    from providers.models import ProviderModel
    from routing.models import Deployment, RouteGroup, RoutingRule

    def publish() -> str:
        group = RouteGroup.objects.create(name="assistant-group")
        Deployment.objects.create(group=group, provider_model=ProviderModel.objects.get(alias="house"))
        RoutingRule.objects.create(name="assistant-rule", model="assistant", group=group)
        return api_key_create(tenant=gateway.tenant, name="assistant-only", allowed_models=["assistant"])[1]

    assistant_only = await sync_to_async(publish)()
    assert (await post(assistant_only, "/v1/chat/completions", chat("assistant"))).status_code == 200
    assert await served_model() == ALLOWED_UPSTREAM
    assert (await post(assistant_only, "/v1/chat/completions", chat("house"))).status_code == 403
    assert (await post(limited, "/v1/chat/completions", chat("assistant"))).status_code == 403


async def test_a_cached_answer_of_a_disallowed_alias_is_not_served_to_the_limited_key(gateway, limited):
    """The response cache is the tenant's, keyed by the requested name: "fake:premium" asked by a
    key that may use every model is answered by "premium" and cached; the same request from the
    key allowed only "house" must not get that answer."""
    body = chat("fake:premium", temperature=0)  # deterministic: cached under the default policy
    first = await post(gateway.raw_key, "/v1/chat/completions", body)
    assert first.status_code == 200 and first.headers["x-gateway-cache"] == "miss"
    assert await served_model() == "premium-large"
    again = await post(gateway.raw_key, "/v1/chat/completions", body)
    assert again.headers["x-gateway-cache"] == "hit"  # the cache is on for this request

    limited_answer = await post(limited, "/v1/chat/completions", body)
    assert limited_answer.status_code == 200, limited_answer.content
    assert limited_answer.headers["x-gateway-cache"] == "miss"
    assert await served_model() == ALLOWED_UPSTREAM
