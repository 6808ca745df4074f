"""Tenant self-service: a tenant's admins manage its keys, members and content retention on the
dashboard's pages; viewers only look; other tenants' things are 404s; every write is audited.

The keys made on the page are used against the real gateway application in process
(`tests.asgi_client`), with the fake provider as a real server (`gateway` fixture)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from accounting.budgets import BudgetExceeded, Reservation, budget_reserve, budgets_for
from accounting.models import Budget, BudgetPeriod, RateLimit, Tenant, TenantApiKey, TenantMembership
from accounting.selfservice.services import KeyLimits, tenant_key_limits_set
from accounting.services import api_key_create, tenant_create
from audit.models import AuditEntry
from tests.asgi_client import SyncApiClient
from tests.conftest import role_join

SECRET = re.compile(r'<code id="new-key"[^>]*>(sk-gw-[\w-]+)</code>')


def member_client(name: str, tenant, role: str = "viewer", *, enforce_csrf: bool = False) -> Client:
    user = User.objects.create_user(name, email=f"{name}@example.com", password="pw")
    TenantMembership.objects.create(user=user, tenant=tenant, role=role)
    client = Client(enforce_csrf_checks=enforce_csrf)
    client.force_login(user)
    return client


def chat(raw_key: str, model: str = "gpt-4o-mini"):
    return SyncApiClient().post(
        "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16},
        headers={"Authorization": f"Bearer {raw_key}"},
    )


def secret_of(response) -> str:
    match = SECRET.search(response.content.decode())
    assert match, "no new key on the page"
    return match.group(1)


def dashboard_audit() -> list[tuple[str, str, list[str]]]:
    return [(e.action, e.object_type, e.changed_fields)
            for e in AuditEntry.objects.filter(via="dashboard").order_by("pk")]


KEY_FORM = {"name": "web", "allowed_models": "gpt-4o-mini", "expires_at": "",
            "daily_usd": "1", "monthly_usd": "5", "rpm": "100", "tpm": ""}


# --- roles ----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_viewer_sees_the_pages_and_gets_403_on_every_write():
    acme = tenant_create(slug="acme")
    key, _ = api_key_create(tenant=acme, name="ci")
    admin = member_client("ada", acme, "admin")
    viewer = member_client("vic", acme, "viewer")
    ada = TenantMembership.objects.get(user__username="ada")

    page = viewer.get("/dashboard/acme/keys/")
    assert page.status_code == 200 and "ci" in page.content.decode()
    assert 'id="key-create"' not in page.content.decode()
    assert 'id="key-create"' in admin.get("/dashboard/acme/keys/").content.decode()
    for path in (f"/dashboard/acme/keys/{key.pk}/", "/dashboard/acme/members/", "/dashboard/acme/settings/"):
        assert viewer.get(path).status_code == 200, path
    writes = [
        ("/dashboard/acme/keys/", KEY_FORM),
        (f"/dashboard/acme/keys/{key.pk}/", {"daily_usd": "1"}),
        (f"/dashboard/acme/keys/{key.pk}/revoke", {}),
        (f"/dashboard/acme/keys/{key.pk}/rotate", {}),
        ("/dashboard/acme/members/", {"email": "new@example.com", "role": "admin"}),
        (f"/dashboard/acme/members/{ada.pk}/role", {"role": "viewer"}),
        (f"/dashboard/acme/members/{ada.pk}/remove", {}),
        ("/dashboard/acme/settings/", {"keep_content": "on", "content_retention_days": "7"}),
    ]
    before = TenantApiKey.objects.get(pk=key.pk).hashed_key
    for path, data in writes:
        assert viewer.post(path, data).status_code == 403, path
    key.refresh_from_db()
    assert key.hashed_key == before and not key.revoked and TenantApiKey.objects.count() == 1
    assert not Budget.objects.exists() and not User.objects.filter(username="new@example.com").exists()
    assert TenantMembership.objects.get(pk=ada.pk).role == "admin"
    assert not Tenant.objects.get(pk=acme.pk).keep_content
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db
def test_an_operator_sees_every_tenant_s_pages_but_changes_them_in_the_admin():
    tenant_create(slug="acme")
    operator = User.objects.create_user("olga", password="pw", is_staff=True)
    role_join(operator, "Gateway viewers")
    client = Client()
    client.force_login(operator)
    assert client.get("/dashboard/acme/keys/").status_code == 200
    assert client.post("/dashboard/acme/keys/", KEY_FORM).status_code == 403
    outsider = Client()
    outsider.force_login(User.objects.create_user("nobody", password="pw"))
    assert outsider.get("/dashboard/acme/keys/").status_code == 404
    assert Client().get("/dashboard/acme/keys/").status_code == 302  # to the login page


@pytest.mark.django_db
def test_every_form_needs_its_csrf_token():
    acme = tenant_create(slug="acme")
    key, _ = api_key_create(tenant=acme, name="ci")
    admin = member_client("ada", acme, "admin", enforce_csrf=True)
    other = TenantMembership.objects.get(user=User.objects.get(username="ada"))
    for path in ("/dashboard/acme/keys/", f"/dashboard/acme/keys/{key.pk}/", f"/dashboard/acme/keys/{key.pk}/revoke",
                 f"/dashboard/acme/keys/{key.pk}/rotate", "/dashboard/acme/members/",
                 f"/dashboard/acme/members/{other.pk}/role", f"/dashboard/acme/members/{other.pk}/remove",
                 "/dashboard/acme/settings/"):
        assert admin.post(path, KEY_FORM).status_code == 403, path
    assert TenantApiKey.objects.count() == 1 and not TenantApiKey.objects.get().revoked
    member_client("vic", acme)
    for path in ("/dashboard/acme/keys/", f"/dashboard/acme/keys/{key.pk}/", "/dashboard/acme/members/",
                 "/dashboard/acme/settings/"):
        page = admin.get(path).content.decode()
        forms = re.findall(r"<form.*?</form>", page, re.S)
        assert len(forms) >= 2 and all("csrfmiddlewaretoken" in form for form in forms), path


# --- keys -----------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_key_made_on_the_page_answers_and_is_rotated_and_revoked_at_once(gateway):
    admin = member_client("ada", gateway.tenant, "admin")
    created = admin.post("/dashboard/acme/keys/", {**KEY_FORM, "expires_at": "2099-01-01T00:00"})
    assert created.status_code == 201 and created["Cache-Control"].startswith("max-age=0")
    raw = secret_of(created)
    key = TenantApiKey.objects.get(prefix=raw[:12])
    assert key.allowed_models == ["gpt-4o-mini"] and key.expires_at.year == 2099
    assert sorted(key.budgets.values_list("period", "amount_usd", "hard")) == [
        ("daily", Decimal("1"), True), ("monthly", Decimal("5"), True)]
    assert key.rate_limits.get().rpm == 100 and key.rate_limits.get().tpm is None
    assert raw not in admin.get("/dashboard/acme/keys/").content.decode()  # shown once

    answer = chat(raw)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    assert answer.headers["x-ratelimit-limit-requests"] == "100"
    page = admin.get(f"/dashboard/acme/keys/{key.pk}/").content.decode()
    # The bucket the request drew from, as the store has it now (refilling continuously, and with
    # Redis less what this process holds as a lease: docs/accounting.md, "Rate limits").
    left = int(re.search(r"key requests: (\d+) of 100 a minute left now", page).group(1))
    assert 95 <= left <= 100
    assert chat(raw, model="gpt-4o").json()["error"]["code"] == "model_not_allowed"

    rotated = admin.post(f"/dashboard/acme/keys/{key.pk}/rotate")
    new_raw = secret_of(rotated)
    assert new_raw != raw and chat(raw).status_code == 401 and chat(new_raw).status_code == 200

    assert admin.post(f"/dashboard/acme/keys/{key.pk}/revoke").status_code == 302
    assert chat(new_raw).status_code == 401
    assert "revoked" in admin.get(f"/dashboard/acme/keys/{key.pk}/").content.decode()
    assert dashboard_audit() == [
        ("created", "accounting.tenantapikey", ["allowed_models", "expires_at", "name"]),
        ("created", "accounting.budget", ["amount_usd", "hard", "period"]),
        ("created", "accounting.budget", ["amount_usd", "hard", "period"]),
        ("created", "accounting.ratelimit", ["rpm", "tpm"]),
        ("rotated", "accounting.tenantapikey", ["secret"]),
        ("revoked", "accounting.tenantapikey", ["revoked"]),
    ]
    entries = AuditEntry.objects.filter(via="dashboard")
    assert {e.actor for e in entries} == {"ada"} and all(e.user.username == "ada" for e in entries)
    assert not any(raw in repr(e.__dict__) or new_raw in repr(e.__dict__) for e in entries)


@pytest.mark.django_db
def test_bad_key_forms_say_what_is_wrong():
    tenant_create(slug="acme")
    admin = member_client("ada", Tenant.objects.get(), "admin")
    cases = [
        ({"name": ""}, "This field is required"),
        ({"allowed_models": "gpt 4o, ok"}, "Not a model name: gpt 4o"),
        ({"expires_at": "2001-01-01T00:00"}, "must be in the future"),
        ({"expires_at": "tomorrow"}, "Enter a valid date/time"),
        ({"daily_usd": "-1"}, "greater than or equal to"),
        ({"monthly_usd": "abc"}, "Enter a number"),
        ({"rpm": "0"}, "greater than or equal to 1"),
    ]
    for change, message in cases:
        response = admin.post("/dashboard/acme/keys/", {**KEY_FORM, **change})
        assert response.status_code == 400 and message in response.content.decode(), change
    assert not TenantApiKey.objects.exists()


@pytest.mark.django_db
def test_the_key_page_edits_its_limits_and_shows_every_budget_that_applies():
    acme = tenant_create(slug="acme")
    key, _ = api_key_create(tenant=acme, name="web")
    Budget.objects.create(tenant=acme, amount_usd=Decimal("50"), period="monthly")
    admin = member_client("ada", acme, "admin")
    path = f"/dashboard/acme/keys/{key.pk}/"

    saved = admin.post(path, {"daily_usd": "2", "weekly_usd": "20", "rpm": "60", "tpm": "1000"}, follow=True)
    assert "Saved: daily budget, weekly budget, rate limits." in saved.content.decode()
    page = admin.get(path).content.decode()
    assert 'name="weekly_usd" value="20"' in page and 'name="tpm" value="1000"' in page  # the form as saved
    charts = re.findall(r'data-chart="(budget-\d+)"', page)
    assert len(charts) == 3  # the tenant's monthly, the key's daily and weekly
    assert re.search(r'data-figure="headroom">\$2\.0000', page)  # the tightest: the daily $2

    admin.post(path, {"weekly_usd": "9", "rpm": "60"})  # daily cleared: disabled, weekly changed
    daily, weekly = key.budgets.order_by("period")
    assert (daily.period, daily.enabled, weekly.amount_usd) == ("daily", False, Decimal("9"))
    assert key.rate_limits.get().tpm is None
    admin.post(path, {})
    assert not RateLimit.objects.exists() and not Budget.objects.filter(api_key=key, enabled=True).exists()
    assert [(a, t.split(".")[1], f) for a, t, f in dashboard_audit()] == [
        ("created", "budget", ["amount_usd", "hard", "period"]),
        ("created", "budget", ["amount_usd", "hard", "period"]),
        ("created", "ratelimit", ["rpm", "tpm"]),
        ("changed", "budget", ["enabled"]),
        ("changed", "budget", ["amount_usd"]),
        ("changed", "ratelimit", ["tpm"]),
        ("changed", "budget", ["enabled"]),
        ("deleted", "ratelimit", []),
    ]


# --- isolation ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_an_admin_of_one_tenant_cannot_touch_another_s_keys_or_members():
    acme, globex = tenant_create(slug="acme"), tenant_create(slug="globex")
    theirs, _ = api_key_create(tenant=globex, name="secret-project")
    admin = member_client("ada", acme, "admin")
    member_client("gus", globex, "admin")
    gus = TenantMembership.objects.get(user__username="gus")
    for path in ("/dashboard/globex/keys/", f"/dashboard/globex/keys/{theirs.pk}/", "/dashboard/globex/members/",
                 "/dashboard/globex/settings/", f"/dashboard/acme/keys/{theirs.pk}/"):
        response = admin.get(path)
        assert response.status_code == 404 and b"secret-project" not in response.content, path
    for path, data in [
        ("/dashboard/globex/keys/", KEY_FORM),
        (f"/dashboard/globex/keys/{theirs.pk}/revoke", {}),
        (f"/dashboard/acme/keys/{theirs.pk}/revoke", {}),
        (f"/dashboard/acme/keys/{theirs.pk}/rotate", {}),
        (f"/dashboard/acme/keys/{theirs.pk}/", {"daily_usd": "0.01"}),
        (f"/dashboard/acme/members/{gus.pk}/role", {"role": "viewer"}),
        (f"/dashboard/acme/members/{gus.pk}/remove", {}),
        (f"/dashboard/globex/members/{gus.pk}/remove", {}),
        ("/dashboard/globex/settings/", {"content_retention_days": "1"}),
    ]:
        assert admin.post(path, data).status_code == 404, path
    theirs.refresh_from_db()
    assert not theirs.revoked and not theirs.budgets.exists() and globex.api_keys.count() == 1
    assert TenantMembership.objects.get(pk=gus.pk).role == "admin"
    assert b"secret-project" not in admin.get("/dashboard/acme/keys/").content
    assert b"gus" not in admin.get("/dashboard/acme/members/").content
    assert not AuditEntry.objects.exists()


# --- members and settings -------------------------------------------------------------------------
@pytest.mark.django_db
def test_members_are_invited_their_roles_changed_and_removed():
    acme, globex = tenant_create(slug="acme"), tenant_create(slug="globex")
    admin = member_client("ada", acme, "admin")
    member_client("gus", globex)

    invited = admin.post("/dashboard/acme/members/", {"email": "New.Person@Example.com", "role": "viewer"}, follow=True)
    assert "Added new.person@example.com as viewer" in invited.content.decode()
    person = User.objects.get(username="new.person@example.com")
    assert not person.has_usable_password() and person.membership.tenant == acme
    [message] = mail.outbox
    assert message.to == ["new.person@example.com"] and "acme" in message.subject
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", message.body).group(1)
    set_password = Client().get(link, follow=True)
    assert b'name="new_password1"' in set_password.content  # the link opens the set-password form

    refused = admin.post("/dashboard/acme/members/", {"email": "gus@example.com", "role": "admin"})
    assert refused.status_code == 400 and b"gus@example.com cannot be added here" in refused.content
    User.objects.create_user("olga", email="olga@example.com", is_staff=True)
    refused = admin.post("/dashboard/acme/members/", {"email": "olga@example.com", "role": "viewer"})
    assert refused.status_code == 400 and b"olga@example.com cannot be added here" in refused.content
    assert admin.post("/dashboard/acme/members/", {"email": "not-an-email", "role": "admin"}).status_code == 400
    assert admin.post("/dashboard/acme/members/", {"email": "x@example.com", "role": "owner"}).status_code == 400

    membership = person.membership
    admin.post(f"/dashboard/acme/members/{membership.pk}/role", {"role": "admin"})
    assert TenantMembership.objects.get(pk=membership.pk).role == "admin"
    own = TenantMembership.objects.get(user__username="ada")
    said = admin.post(f"/dashboard/acme/members/{own.pk}/role", {"role": "viewer"}, follow=True)
    assert b"You cannot change your own membership" in said.content
    assert admin.post(f"/dashboard/acme/members/{own.pk}/remove").status_code == 302
    assert TenantMembership.objects.get(pk=own.pk).role == "admin"
    admin.post(f"/dashboard/acme/members/{membership.pk}/remove")
    assert not TenantMembership.objects.filter(pk=membership.pk).exists()
    assert [(a, t) for a, t, _ in dashboard_audit()] == [
        ("created", "auth.user"), ("created", "accounting.tenantmembership"),
        ("changed", "accounting.tenantmembership"), ("deleted", "accounting.tenantmembership"),
    ]


@pytest.mark.django_db
def test_the_admin_sets_the_tenant_s_content_retention():
    acme = tenant_create(slug="acme")
    admin = member_client("ada", acme, "admin")
    assert admin.post("/dashboard/acme/settings/", {"content_retention_days": "0"}).status_code == 400
    assert admin.post("/dashboard/acme/settings/", {"content_retention_days": "x"}).status_code == 400
    admin.post("/dashboard/acme/settings/", {"keep_content": "on", "content_retention_days": "7"})
    acme.refresh_from_db()
    assert acme.keep_content and acme.content_retention_days == 7
    assert dashboard_audit() == [("changed", "accounting.tenant", ["content_retention_days", "keep_content"])]


# --- several budgets per key ----------------------------------------------------------------------
NOW = datetime(2026, 11, 18, 15, 30, tzinfo=dt_timezone.utc)  # a Wednesday


async def _reserve_concurrently(tenant_id: int, key_id: int, count: int, estimate: str) -> list:
    """`count` requests of the key reserving at once, with the budgets the hot path reads (cached)."""
    budgets = await budgets_for(tenant_id=tenant_id, key_id=key_id)
    return await asyncio.gather(*(
        budget_reserve(budgets=budgets, request_id=str(uuid.uuid4()), estimate=Decimal(estimate), now=NOW)
        for _ in range(count)
    ), return_exceptions=True)


def _reserved() -> dict[tuple[str, str], Decimal]:
    return {("key" if p.budget.api_key_id else "tenant", p.budget.period): p.reserved_usd
            for p in BudgetPeriod.objects.select_related("budget")}


@pytest.mark.django_db(transaction=True)
def test_the_tightest_of_a_key_s_budgets_wins_under_concurrent_reservations():
    acme = tenant_create(slug="acme")
    key, _ = api_key_create(tenant=acme, name="web")
    Budget.objects.create(tenant=acme, amount_usd=Decimal("0.50"), period="monthly")
    ada = User.objects.create_user("ada")
    budgets = {"daily": Decimal("0.10"), "weekly": Decimal("0.16"), "monthly": Decimal("1")}
    tenant_key_limits_set(key=key, user=ada, limits=KeyLimits(budgets=budgets))

    outcomes = async_to_sync(_reserve_concurrently)(acme.pk, key.pk, 12, "0.02")
    held = [o for o in outcomes if isinstance(o, Reservation)]
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert len(held) == 5 and len(refused) == 7  # $0.10 a day holds five $0.02 requests
    assert {(r.details["scope"], r.details["period"]) for r in refused} == {("api_key", "daily")}
    assert all(len(reservation.period_ids) == 4 for reservation in held)  # each held on all four
    assert _reserved() == {("tenant", "monthly"): Decimal("0.10"), ("key", "daily"): Decimal("0.10"),
                           ("key", "weekly"): Decimal("0.10"), ("key", "monthly"): Decimal("0.10")}

    # The admin clears the daily budget on the key's page: the weekly one is the tightest now, at
    # once (the change raised the configuration generation the cached budgets are read under).
    tenant_key_limits_set(key=key, user=ada, limits=KeyLimits(budgets={**budgets, "daily": None}))
    outcomes = async_to_sync(_reserve_concurrently)(acme.pk, key.pk, 8, "0.02")
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert sum(isinstance(o, Reservation) for o in outcomes) == 3 and len(refused) == 5
    assert {(r.details["scope"], r.details["period"]) for r in refused} == {("api_key", "weekly")}
    reserved = _reserved()
    assert reserved[("key", "weekly")] == Decimal("0.16") and reserved[("tenant", "monthly")] == Decimal("0.16")
    assert reserved[("key", "daily")] == Decimal("0.10")  # the disabled budget's held requests stay held
