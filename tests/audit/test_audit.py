"""The audit log from the admin and the management commands; no secret ever lands in it."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client

from accounting.models import Budget, TenantApiKey
from accounting.services import api_key_create, tenant_create
from audit.models import AuditEntry
from providers.models import Provider, ProviderKey

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(db) -> Client:
    from django.contrib.auth.models import User

    User.objects.create_superuser("boss", password="pw-boss-1234")
    client = Client()
    client.login(username="boss", password="pw-boss-1234")
    return client


def all_audit_text() -> str:
    return repr(list(AuditEntry.objects.values()))


def test_admin_provider_key_created_rotated_deleted(admin_client):
    provider = Provider.objects.create(name="openai", api_base="https://api.openai.com/v1")
    first, second = "sk-proj-admin-SECRET-one", "sk-proj-admin-SECRET-two"
    response = admin_client.post("/admin/providers/providerkey/add/",
                                 {"provider": provider.pk, "name": "main", "secret": first, "enabled": "on"})
    assert response.status_code == 302, response.content
    key = ProviderKey.objects.get()
    admin_client.post(f"/admin/providers/providerkey/{key.pk}/change/",
                      {"provider": provider.pk, "name": "main", "secret": "", "enabled": "on"})  # nothing changed
    admin_client.post(f"/admin/providers/providerkey/{key.pk}/change/",
                      {"provider": provider.pk, "name": "main", "secret": second, "enabled": "on"})
    assert ProviderKey.objects.get().get_secret() == second
    admin_client.post(f"/admin/providers/providerkey/{key.pk}/delete/", {"post": "yes"})
    assert not ProviderKey.objects.exists()
    entries = list(AuditEntry.objects.order_by("pk"))
    assert [(e.action, e.via, e.actor, e.object_repr) for e in entries] == [
        ("created", "admin", "boss", "openai/main"),
        ("rotated", "admin", "boss", "openai/main"),
        ("deleted", "admin", "boss", "openai/main"),
    ]
    assert entries[1].changed_fields == ["secret"]
    text = all_audit_text()
    assert first not in text and second not in text and "SECRET" not in text


def test_admin_tenant_key_created_revoked_and_budget_changed(admin_client):
    tenant = tenant_create(slug="acme")
    response = admin_client.post("/admin/accounting/tenantapikey/add/",
                                 {"tenant": tenant.pk, "name": "web", "allowed_models": "gpt-4o"})
    assert response.status_code == 302
    key = TenantApiKey.objects.get()
    admin_client.post("/admin/accounting/tenantapikey/", {"action": "revoke", "_selected_action": [key.pk]})
    assert TenantApiKey.objects.get().revoked
    budget = Budget.objects.create(tenant=tenant, amount_usd=10, period="monthly")
    admin_client.post(f"/admin/accounting/budget/{budget.pk}/change/", {
        "tenant": tenant.pk, "amount_usd": "20", "period": "monthly", "hard": "on", "alert_thresholds": "[]",
        "enabled": "on", "periods-TOTAL_FORMS": "0", "periods-INITIAL_FORMS": "0",
    })
    assert Budget.objects.get().amount_usd == 20
    rows = [(e.action, e.object_type, e.changed_fields) for e in AuditEntry.objects.order_by("pk")]
    assert rows[:2] == [
        ("created", "accounting.tenantapikey", ["allowed_models", "name", "tenant"]),
        ("revoked", "accounting.tenantapikey", ["revoked"]),
    ]
    assert rows[2][:2] == ("changed", "accounting.budget") and "amount_usd" in rows[2][2]
    assert TenantApiKey.objects.get().hashed_key not in all_audit_text()


def test_create_api_key_command_is_audited_without_the_key(db, capsys):
    tenant_create(slug="acme")
    call_command("create_api_key", "acme", "--name", "cli")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.via, entry.actor, entry.user) == ("created", "command", "manage.py create_api_key", None)
    assert raw not in all_audit_text() and TenantApiKey.objects.get().hashed_key not in all_audit_text()


def test_audit_admin_is_read_only(admin_client):
    tenant = tenant_create(slug="acme")
    key, _ = api_key_create(tenant=tenant)
    from audit.services import audit_record

    entry = audit_record(action="revoked", obj=key, via="api", actor="someone")
    assert admin_client.get("/admin/audit/auditentry/").status_code == 200
    assert admin_client.get(f"/admin/audit/auditentry/{entry.pk}/change/").status_code == 200  # view only
    assert admin_client.get("/admin/audit/auditentry/add/").status_code == 403
    admin_client.post(f"/admin/audit/auditentry/{entry.pk}/delete/", {"post": "yes"})
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_admin_route_group_with_deployments_names_the_inline(admin_client):
    from providers.models import ProviderModel
    from routing.models import RouteGroup

    provider = Provider.objects.create(name="fake", api_base="https://fake.example/v1")
    model = ProviderModel.objects.create(provider=provider, alias="gpt-4o", upstream_model="gpt-4o")
    response = admin_client.post("/admin/routing/routegroup/add/", {
        "name": "smart", "strategy": "fallback", "retries": "1", "total_timeout_seconds": "60",
        "best_rated_lambda": "0", "best_rated_min_share": "0.05", "best_rated_min_ratings": "30",
        "deployments-TOTAL_FORMS": "1", "deployments-INITIAL_FORMS": "0",
        "deployments-0-provider_model": model.pk, "deployments-0-priority": "0", "deployments-0-weight": "1",
        "deployments-0-enabled": "on",
    })
    assert response.status_code == 302, response.content[:2000]
    assert RouteGroup.objects.get().deployments.count() == 1
    entry = AuditEntry.objects.get(object_type="routing.routegroup")
    assert entry.action == "created" and "deployments" in entry.changed_fields and "name" in entry.changed_fields
