"""Secrets scrubbed from upstream errors: the function, then every surface an upstream's words reach
(the tenant's answer in both formats, the UsageRecord, /ready, the health API and page, the logs),
against the real fake provider answering with an error that quotes the key it was sent."""

from __future__ import annotations

import json
import logging

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from kernel.loops import background_wait
from kernel.redact import secrets_redact
from tests.asgi_client import ApiClient

# Shaped like no key at all: only the rule for the call's exact secret can catch it.
PLAIN_SECRET = "plain-provider-secret-quoted-9f3a77"
ANTHROPIC_SECRET = "sk-ant-api03-quoted-Xy12Zw34Vu56"


@pytest.mark.parametrize("text, expected", [
    ("Incorrect API key provided: sk-proj-****************************abcd. You can find",
     "Incorrect API key provided: [redacted]. You can find"),
    ("key sk-ant-api03-AbCdEf123456 refused", "key [redacted] refused"),
    ("your gateway key sk-gw-AbCdEf123456_x is wrong", "your gateway key [redacted] is wrong"),
    ("API key AIzaSyA1b2C3d4E5f6G7h8I9j0 not valid", "API key [redacted] not valid"),
    ("got Authorization: Bearer abc.def-ghi", "got Authorization: Bearer [redacted]"),
    ('"GET /v1/models?API_KEY=abc123&limit=5 HTTP/1.1" 200', '"GET /v1/models?API_KEY=[redacted]&limit=5 HTTP/1.1" 200'),
    ("/v1beta/models?alt=sse&key=AIza-or-not&token=t0k", "/v1beta/models?alt=sse&key=[redacted]&token=[redacted]"),
    ("a risky task-list and a monkey=1 stay", "a risky task-list and a monkey=1 stay"),
])
def test_key_shapes_and_query_credentials_are_redacted(text, expected):
    assert secrets_redact(text) == expected


def test_the_exact_secret_goes_whatever_its_shape():
    assert secrets_redact(f"proxy says {PLAIN_SECRET}!", secret=PLAIN_SECRET) == "proxy says [redacted]!"
    # Too short to look for (a test key like "x" would blank every x); shapes still apply.
    assert secrets_redact("x marks sk-abcdef", secret="x") == "x marks [redacted]"


# --- end to end ---------------------------------------------------------------------------------
@pytest.fixture
def quoting(gateway):
    """Two providers on the fake, an OpenAI- and an Anthropic-format one, whose keys the fake's
    `quote_key` error quotes whole."""
    from providers.models import Provider, ProviderModel
    from providers.services import provider_key_upsert

    providers = {}
    for name, wire, api_base, secret in (
        ("quoting", "openai", f"{gateway.provider.api_base}", PLAIN_SECRET),
        ("quoting-ant", "anthropic", gateway.anthropic_provider.api_base, ANTHROPIC_SECRET),
    ):
        provider = Provider.objects.create(name=name, type=wire, api_base=api_base)
        provider_key_upsert(provider=provider, name="default", secret=secret)
        ProviderModel.objects.create(provider=provider, alias=f"{name}-model", upstream_model="gpt-4o-mini",
                                     input_price_per_million="1", output_price_per_million="1")
        providers[name] = provider
    return providers


def _assert_scrubbed(text: str, where: str) -> None:
    for secret in (PLAIN_SECRET, ANTHROPIC_SECRET):
        assert secret not in text, f"{secret} in {where}"
        assert secret[8:24] not in text, f"part of {secret} in {where}"


@pytest.mark.django_db(transaction=True)
async def test_an_upstream_error_quoting_the_key_reaches_no_surface(gateway, quoting, caplog, django_user_model):
    from accounting.models import UsageRecord
    from operators.services import staff_token_create

    caplog.set_level(logging.DEBUG)
    client, api = AsyncClient(), ApiClient()
    prompt = [{"role": "user", "content": "hello [[fake quote_key]]"}]
    answers = []
    for model in ("quoting-model", "quoting-ant-model"):
        for stream in (False, True):
            answer = await api.post("/v1/chat/completions", json.dumps(
                {"model": model, "messages": prompt, "stream": stream}),
                content_type="application/json", headers=gateway.auth)
            assert answer.status_code == 502, answer.content
            assert "Incorrect API key provided: [redacted]." in answer.json()["error"]["message"]
            answers.append(answer.content.decode())
        anthropic = await api.post("/v1/messages", json.dumps(
            {"model": model, "max_tokens": 20, "messages": prompt}),
            content_type="application/json", headers=gateway.auth)
        assert anthropic.status_code == 502 and anthropic.json()["type"] == "error"
        answers.append(anthropic.content.decode())
    await background_wait()  # the deployments' health samples are counted in the background

    staff = await sync_to_async(django_user_model.objects.create_superuser)("root", "r@example.com", "pw-9")
    _, token = await sync_to_async(staff_token_create)(user=staff)
    ready = (await client.get("/ready")).json()
    last_errors = {p["provider"]: p.get("last_error", "") for p in ready["providers"]}
    assert "[redacted]" in last_errors["quoting"] and "[redacted]" in last_errors["quoting-ant"]
    health = await client.get(f"/v1/providers/{quoting['quoting'].pk}/health",
                              headers={"Authorization": f"Bearer {token}"})
    [deployment] = health.json()["deployments"]
    assert deployment["health"]["last_error"].startswith("auth: Provider 'quoting' returned 401: Incorrect API key")
    assert "[redacted]" in deployment["health"]["last_error"]
    await sync_to_async(client.force_login)(staff)
    page = await client.get("/admin/routing/routegroup/health/")
    assert page.status_code == 200 and "[redacted]" in page.content.decode()

    rows = await sync_to_async(lambda: json.dumps(list(UsageRecord.objects.values()), default=str))()
    logs = "\n".join(record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records)
    for where, text in {"answers": "\n".join(answers), "usage rows": rows, "/ready": json.dumps(ready),
                        "health API": health.content.decode(), "health page": page.content.decode(),
                        "logs": logs}.items():
        _assert_scrubbed(text, where)
