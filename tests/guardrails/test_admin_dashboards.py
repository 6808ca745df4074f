"""Guardrails in the admin (policies with rule inlines, read-only events) and on the dashboards."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounting.dashboards import window_for
from guardrails.dashboards import guardrail_event_counts
from accounting.models import TenantMembership
from accounting.services import tenant_create
from guardrails.models import GuardrailEvent, GuardrailPolicy, GuardrailRule

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenants():
    return tenant_create(slug="acme", name="Acme"), tenant_create(slug="globex", name="Globex")


def event(tenant, kind="pii_email", action="block", **extra) -> GuardrailEvent:
    return GuardrailEvent.objects.create(
        tenant=tenant, request_id=uuid.uuid4(), kind=kind, action=action, direction="input",
        location="messages[0].content", snippet="xxxx@xxxxxxx.xxx", **extra,
    )


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user("op", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def test_one_default_policy_and_one_per_tenant(tenants):
    from django.db import IntegrityError, transaction

    GuardrailPolicy.objects.create()
    GuardrailPolicy.objects.create(tenant=tenants[0])
    for tenant in (None, tenants[0]):
        with pytest.raises(IntegrityError), transaction.atomic():
            GuardrailPolicy.objects.create(tenant=tenant)


def test_the_policy_admin_edits_rules_inline_and_rejects_a_bad_pattern(staff_client, tenants):
    form = {
        "tenant": tenants[0].pk, "name": "strict", "enabled": "on", "inherit_default": "on",
        "rules-TOTAL_FORMS": "1", "rules-INITIAL_FORMS": "0", "rules-MIN_NUM_FORMS": "0", "rules-MAX_NUM_FORMS": "1000",
        "rules-0-kind": "blocked_pattern", "rules-0-direction": "input", "rules-0-action": "block",
        "rules-0-pattern": "(unclosed", "rules-0-enabled": "on",
    }
    response = staff_client.post("/admin/guardrails/guardrailpolicy/add/", form)
    assert response.status_code == 200 and b"Not a valid regular expression" in response.content
    assert not GuardrailPolicy.objects.exists()
    form["rules-0-pattern"] = r"\bfalcon\b"
    response = staff_client.post("/admin/guardrails/guardrailpolicy/add/", form)
    assert response.status_code == 302
    [rule] = GuardrailRule.objects.all()
    assert rule.policy.tenant == tenants[0] and rule.pattern == r"\bfalcon\b"
    page = staff_client.get(f"/admin/guardrails/guardrailpolicy/{rule.policy.pk}/change/")
    assert page.status_code == 200 and b"rules-0-pattern" in page.content


def test_events_are_listed_read_only_and_filtered(staff_client, tenants):
    event(tenants[0])
    event(tenants[1], kind="pii_card", action="redact")
    listing = staff_client.get("/admin/guardrails/guardrailevent/")
    assert listing.status_code == 200 and b"pii_card" in listing.content
    filtered = staff_client.get("/admin/guardrails/guardrailevent/", {"kind": "pii_email", "tenant__id__exact": tenants[0].pk})
    rows = filtered.content.split(b"<tbody>")[1].split(b"</tbody>")[0]
    assert b"pii_card" not in rows and b"pii_email" in rows
    assert b"/add/" not in listing.content.split(b'id="content-main"')[1].split(b"</table>")[0]
    pk = GuardrailEvent.objects.first().pk
    assert staff_client.post(f"/admin/guardrails/guardrailevent/{pk}/delete/", {"post": "yes"}).status_code == 403
    assert staff_client.get(f"/admin/guardrails/guardrailevent/{pk}/change/").status_code == 200  # view only


def test_counts_per_tenant_kind_and_action_within_the_window(tenants):
    acme, globex = tenants
    for _ in range(3):
        event(acme)
    event(acme, action="flag")
    event(globex, kind="pii_card", action="redact")
    old = event(acme)
    GuardrailEvent.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    window = window_for(range_key="30d")
    counts = [(c.tenant, c.kind, c.action, c.events) for c in guardrail_event_counts(window=window)]
    assert counts == [("acme", "pii_email", "block", 3), ("acme", "pii_email", "flag", 1), ("globex", "pii_card", "redact", 1)]
    mine = guardrail_event_counts(window=window, tenant=globex)
    assert [(c.tenant, c.events) for c in mine] == [("globex", 1)]


def test_dashboards_show_the_counts_and_a_member_sees_only_their_tenant(client, staff_client, django_user_model, tenants):
    acme, globex = tenants
    event(acme)
    event(globex, kind="pii_iban", action="redact")
    page = staff_client.get("/dashboard/").content.decode()
    table = page.split('data-table="guardrails"')[1].split("</table>")[0]
    assert "acme" in table and "pii_iban" in table
    member = django_user_model.objects.create_user("ann", password="pw")
    TenantMembership.objects.create(user=member, tenant=acme)
    client.force_login(member)
    page = client.get("/dashboard/acme/").content.decode()
    table = page.split('data-table="guardrails"')[1].split("</table>")[0]
    assert "<td>pii_email</td><td>block</td><td>1</td>" in table and "pii_iban" not in table
