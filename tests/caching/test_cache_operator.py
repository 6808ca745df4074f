"""`GET /v1/cache/stats` and `DELETE /v1/cache` with an operator's staff token."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient

from accounting.services import api_key_create, tenant_create
from audit.models import AuditEntry
from operators.services import staff_token_create
from tests.asgi_client import ApiClient
from tests.conftest import role_join

pytestmark = pytest.mark.django_db(transaction=True)


async def ask(auth: dict, content: str = "Operator view"):
    body = {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": content}]}
    return await ApiClient().post("/v1/chat/completions", json.dumps(body), content_type="application/json", headers=auth)


@pytest.fixture
def staff(db):
    def make(is_staff: bool, *, group: str | None = "Gateway operators") -> dict:
        user = get_user_model().objects.create_user(username=f"op-{is_staff}-{group}", is_staff=True)
        if group:
            role_join(user, group)
        _, raw = staff_token_create(user=user, name="ops")
        get_user_model().objects.filter(pk=user.pk).update(is_staff=is_staff)  # e.g. lost staff status
        return {"Authorization": f"Bearer {raw}"}
    return make


@pytest.fixture
def globex(gateway):
    _, raw = api_key_create(tenant=tenant_create(slug="globex"), name="default")
    return {"Authorization": f"Bearer {raw}"}


async def test_staff_token_reads_every_tenant_and_clears_the_one_named(gateway, globex, staff):
    token = await sync_to_async(staff)(True)
    await ask(gateway.auth)
    await ask(globex)
    client = AsyncClient()
    listed = (await client.get("/v1/cache/stats", headers=token)).json()
    assert listed["object"] == "list"
    assert {e["tenant"]: e["entries"] for e in listed["data"]} == {"acme": 1, "globex": 1}
    one = (await client.get("/v1/cache/stats?tenant=globex", headers=token)).json()
    assert (one["tenant"], one["entries"], one["misses"]) == ("globex", 1, 1)
    assert (await client.delete("/v1/cache", headers=token)).status_code == 400
    cleared = await client.delete("/v1/cache?tenant=globex", headers=token)
    assert cleared.status_code == 200 and cleared.json()["entries"] == 1
    assert (await ask(gateway.auth)).headers["x-gateway-cache"] == "hit"
    assert (await ask(globex)).headers["x-gateway-cache"] == "miss"
    entry = await AuditEntry.objects.aget(object_type="accounting.tenant")
    assert (entry.action, entry.via, entry.changed_fields, entry.object_repr) == ("changed", "api", ["cache"], "globex")
    assert (await client.get("/v1/cache/stats?tenant=nope", headers=token)).status_code == 400


async def test_non_staff_token_and_foreign_tenant_are_refused(gateway, globex, staff):
    token = await sync_to_async(staff)(False)
    client = AsyncClient()
    assert (await client.get("/v1/cache/stats", headers=token)).status_code == 401
    refused = await client.delete("/v1/cache?tenant=globex", headers=gateway.auth)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "tenant"
    assert (await client.get("/v1/cache/stats?tenant=acme", headers=gateway.auth)).json()["tenant"] == "acme"


async def test_a_staff_token_needs_the_cache_permission(gateway, globex, staff):
    await ask(globex)
    client = AsyncClient()
    nobody = await sync_to_async(staff)(True, group=None)
    for method, url, permission in (("get", "/v1/cache/stats", "view"),
                                    ("get", "/v1/cache/stats?tenant=globex", "view"),
                                    ("delete", "/v1/cache?tenant=globex", "change")):
        refused = await getattr(client, method)(url, headers=nobody)
        assert refused.status_code == 403, refused.content
        assert refused.json()["error"] == {
            "message": f"This action needs the permission 'caching.{permission}_cachepolicy'.",
            "type": "permission_error", "param": None, "code": "permission_denied",
        }
    viewer = await sync_to_async(staff)(True, group="Gateway viewers")
    assert (await client.get("/v1/cache/stats?tenant=globex", headers=viewer)).json()["entries"] == 1
    assert (await client.delete("/v1/cache?tenant=globex", headers=viewer)).status_code == 403
    assert (await client.get("/v1/cache/stats", headers=globex)).json()["entries"] == 1  # nothing was cleared
    assert not await AuditEntry.objects.filter(object_type="accounting.tenant").aexists()
    # A tenant key still reads and clears its own tenant's cache, with no user behind it.
    assert (await client.delete("/v1/cache", headers=globex)).json()["entries"] == 1
