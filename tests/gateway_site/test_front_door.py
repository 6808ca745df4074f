"""`/`: the front door, for an anonymous visitor, a tenant member and an operator."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from accounting.services import tenant_create
from tests.conftest import logged_in_client

pytestmark = pytest.mark.django_db


def _doors(html: str) -> dict[str, list[str]]:
    doors: dict[str, list[str]] = {}
    for name, href in re.findall(r'data-door="([^"]+)" href="([^"]+)"', html):
        doors.setdefault(name, []).append(href)
    return doors


def test_an_anonymous_visitor_gets_the_sign_in_link_and_the_api_base_url():
    response = Client().get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert _doors(html) == {"sign-in": ["/accounts/login/?next=/"], "api-docs": ["/api/docs/"]}
    assert '<code data-figure="api-base">http://testserver/v1</code>' in html
    assert Client().post("/").status_code == 405


def test_a_member_sees_their_tenants_pages_and_the_playground():
    acme = tenant_create(slug="acme", name="Acme Corp")
    tenant_create(slug="globex")
    html = logged_in_client("alice", tenant=acme).get("/").content.decode()
    doors = _doors(html)
    assert doors["dashboard"] == ["/dashboard/acme/"] and doors["requests"] == ["/dashboard/acme/requests/"]
    assert doors["feedback"] == ["/dashboard/acme/feedback/"] and doors["keys"] == ["/dashboard/acme/keys/"]
    assert doors["playground"] == ["/playground/"] and "admin" not in doors and "all-tenants" not in doors
    assert "globex" not in html


def test_an_operator_sees_every_tenant_and_the_admin():
    tenant_create(slug="acme")
    tenant_create(slug="globex")
    olga = logged_in_client("olga", staff=True, group="Gateway viewers")
    doors = _doors(olga.get("/").content.decode())
    assert doors["dashboard"] == ["/dashboard/acme/", "/dashboard/globex/"]
    assert doors["all-tenants"] == ["/dashboard/"] and doors["all-requests"] == ["/dashboard/requests/"]
    assert doors["admin"] == ["/admin/"] and "keys" not in doors  # an operator is no member
    # The admin's header is the gateway's, with the way to the other pages.
    admin = olga.get("/admin/").content.decode()
    assert "LLM gateway · admin" in admin and 'href="/dashboard/requests/">Request logs</a>' in admin
    assert 'href="/playground/">Playground</a>' in admin and 'href="/">Front door</a>' in admin
