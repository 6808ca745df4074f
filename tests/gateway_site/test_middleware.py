"""Django's page middleware stays off the tenant API; its security headers do not."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import AsyncClient

pytestmark = pytest.mark.django_db(transaction=True)


async def test_tenant_api_gets_security_headers_but_no_page_middleware(gateway):
    api = await AsyncClient().get("/v1/models", headers=gateway.auth)
    assert api.status_code == 200
    assert api["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware, run inline
    assert "X-Frame-Options" not in api and "Vary" not in api  # no clickjacking or session middleware
    assert not api.cookies

    page = await AsyncClient().get("/admin/login/")
    assert page["X-Frame-Options"] == "DENY" and page["X-Content-Type-Options"] == "nosniff"
    assert "csrftoken" in page.cookies  # CSRF middleware on pages


async def test_csrf_still_guards_pages_and_operator_routes(gateway):
    client = AsyncClient(enforce_csrf_checks=True)
    assert (await client.post("/accounts/login/", {"username": "x", "password": "y"})).status_code == 403


def test_deploy_check_requires_the_gateway_middleware(settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.endswith("CsrfViewMiddleware")]
    from gateway_site.checks import middleware_in_place

    [error] = middleware_in_place()
    assert error.id == "gateway_site.E001" and "CsrfViewMiddleware" in error.msg
    call_command("check")  # the error is a deploy check: plain checks stay quiet
