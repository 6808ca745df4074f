from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from accounting.models import TenantApiKey
from providers.models import Provider

pytestmark = pytest.mark.django_db


def seed() -> str:
    out = StringIO()
    call_command("seed_demo", "--fake-port", "9555", stdout=out)
    return out.getvalue()


def test_seed_is_idempotent_and_prints_secrets_only_once(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    first = seed()
    assert "Demo API key (shown once): sk-gw-" in first
    assert "password: " in first
    second = seed()
    assert "sk-gw-" not in second and "password: " not in second
    assert TenantApiKey.objects.filter(tenant__slug="demo").count() == 1
    assert get_user_model().objects.get(username="admin").is_superuser
    assert set(Provider.objects.values_list("name", flat=True)) == {"fake", "fake-anthropic", "fake-cohere"}
    assert Provider.objects.get(name="fake").api_base == "http://127.0.0.1:9555/v1"


def test_real_providers_are_registered_when_their_keys_are_set(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-0000")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real-0000")
    seed()
    openai = Provider.objects.get(name="openai")
    anthropic = Provider.objects.get(name="anthropic")
    assert openai.api_base == "https://api.openai.com/v1" and openai.priority < Provider.objects.get(name="fake").priority
    assert anthropic.type == "anthropic" and anthropic.api_base == "https://api.anthropic.com"
    assert openai.keys.get().get_secret() == "sk-real-openai-0000"
    assert anthropic.keys.get().source == "env:ANTHROPIC_API_KEY"
    assert set(openai.models.values_list("alias", flat=True)) >= {"gpt-4o-mini", "text-embedding-3-small"}


def test_the_demo_admin_keeps_every_operator_permission(monkeypatch):
    """The demo admin is a superuser: the operator roles (docs/operator-api.md) restrict staff only."""
    from django.test import Client

    from accounting.models import Tenant
    from operators.services import staff_token_create

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    seed()
    _, token = staff_token_create(user=get_user_model().objects.get(username="admin"), name="demo")
    client = Client(headers={"Authorization": f"Bearer {token}"})
    demo = Tenant.objects.get(slug="demo")
    created = client.post("/v1/tenant-keys", {"tenant": demo.pk, "name": "ops"}, content_type="application/json")
    assert created.status_code == 201 and created.json()["key"].startswith("sk-gw-")
    assert client.post(f"/v1/tenant-keys/{created.json()['id']}/rotate").status_code == 200
    assert client.get("/v1/cache/stats?tenant=demo").status_code == 200
    assert client.delete("/v1/cache?tenant=demo").status_code == 200


def test_the_demo_admin_is_an_admin_member_of_demo(monkeypatch):
    """So the playground and demo's self-service pages open for it on a fresh `make run`."""
    from django.test import Client

    from accounting.models import TenantMembership

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    seed()
    seed()  # idempotent: still one membership
    membership = TenantMembership.objects.get()
    assert (membership.user.username, membership.tenant.slug, membership.role) == ("admin", "demo", "admin")
    client = Client()
    client.force_login(membership.user)
    assert client.get("/playground/").status_code == 200
    assert b'id="key-create"' in client.get("/dashboard/demo/keys/").content
