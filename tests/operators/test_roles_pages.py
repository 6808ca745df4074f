"""Operator roles outside the operator API: the admin's own pages, the dashboards, and what a viewer
may read (never a secret)."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.test import Client

from accounting.services import tenant_create
from caching.services import cache_stats
from caching.store import cache_store
from providers.models import ProviderModel
from routing.models import Deployment, Experiment, ExperimentVariant, RouteGroup, RoutingRule
from tests.asgi_client import SyncApiClient
from tests.conftest import logged_in_client, role_join

pytestmark = pytest.mark.django_db


def staff_client(name: str, *, group: str | None = None, tenant=None):
    return logged_in_client(name, staff=True, group=group, tenant=tenant)


@pytest.fixture
def experiment(gateway) -> Experiment:
    group = RouteGroup.objects.create(name="base")
    Deployment.objects.create(group=group, provider_model=ProviderModel.objects.get(alias="gpt-4o-mini"))
    rule = RoutingRule.objects.create(name="smart-rule", model="smart", group=group)
    experiment = Experiment.objects.create(name="mini-vs-4o", rule=rule)
    ExperimentVariant.objects.create(experiment=experiment, name="big", model="gpt-4o", weight=1)
    return experiment


def _cached_entries(tenant) -> int:
    return async_to_sync(cache_stats)(tenant_id=tenant.pk)["entries"]


def test_the_admins_own_pages_need_the_model_permission(gateway, experiment):
    async_to_sync(cache_store().put)(gateway.tenant.pk, "roles-test", {"body": {}}, ttl=300)
    results = f"/admin/routing/experiment/{experiment.pk}/results/"
    clear = f"/admin/caching/cachepolicy/stats/{gateway.tenant.pk}/clear/"
    pages = ["/admin/routing/routegroup/health/", "/admin/routing/routingrule/explain/", results,
             "/admin/caching/cachepolicy/stats/"]

    nobody = staff_client("nobody")
    assert [nobody.get(page).status_code for page in pages] == [403] * len(pages)
    viewer = staff_client("viewer", group="Gateway viewers")
    assert [viewer.get(page).status_code for page in pages] == [200] * len(pages)
    for client in (nobody, viewer):
        assert client.post(results, {"action": "pause"}).status_code == 403
        assert client.post(clear).status_code == 403
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.RUNNING and _cached_entries(gateway.tenant) == 1

    operator = staff_client("operator", group="Gateway operators")
    assert operator.post(results, {"action": "pause"}).status_code == 302
    assert operator.post(clear).status_code == 302
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.PAUSED and _cached_entries(gateway.tenant) == 0
    assert staff_client("nobody-2").get("/admin/routing/experiment/424242/results/").status_code == 403


def test_staff_without_the_view_permission_see_no_other_tenant_on_the_dashboards(db):
    acme = tenant_create(slug="acme", name="Acme")
    tenant_create(slug="globex", name="Globex")
    everything = ["/dashboard/", "/dashboard/export.csv", "/dashboard/feedback/",
                  "/dashboard/feedback/corrections.jsonl"]
    of_globex = ["/dashboard/globex/", "/dashboard/globex/export.csv?table=models", "/dashboard/globex/feedback/",
                 "/dashboard/globex/feedback/corrections.jsonl"]

    nobody = staff_client("nobody")
    assert [nobody.get(url).status_code for url in everything + of_globex] == [403] * 4 + [404] * 4

    member = staff_client("member", tenant=acme)  # staff, and a member of acme: acme only, like any member
    index = member.get("/dashboard/")
    assert index.status_code == 302 and index["Location"] == "/dashboard/acme/"
    page = member.get("/dashboard/acme/")
    assert page.status_code == 200 and "All tenants" not in page.content.decode()
    assert [member.get(url).status_code for url in everything[1:] + of_globex] == [403] * 3 + [404] * 4

    viewer = staff_client("viewer", group="Gateway viewers")
    assert [viewer.get(url).status_code for url in everything + of_globex] == [200] * 8
    assert "globex" in viewer.get("/dashboard/").content.decode()
    assert "All tenants" in viewer.get("/dashboard/acme/").content.decode()


def test_a_viewer_reads_keys_without_any_secret_and_no_staff_token(gateway):
    from operators.services import staff_token_create

    key = gateway.provider.keys.get()
    viewer_user = User.objects.create_user("viewer", is_staff=True)
    role_join(viewer_user, "Gateway viewers")
    _, token = staff_token_create(user=viewer_user)
    admin = Client()
    admin.force_login(viewer_user)
    api = Client(headers={"Authorization": f"Bearer {token}"})
    answers = {url: admin.get(url) for url in (
        "/admin/providers/providerkey/", f"/admin/providers/providerkey/{key.pk}/change/",
        "/admin/accounting/tenantapikey/", f"/admin/accounting/tenantapikey/{gateway.key.pk}/change/",
    )}
    answers |= {url: api.get(url) for url in (
        "/v1/provider-keys", f"/v1/provider-keys/{key.pk}", "/v1/tenant-keys", f"/v1/tenant-keys/{gateway.key.pk}",
    )}
    secrets = [key.get_secret(), key.encrypted_secret, gateway.raw_key, gateway.key.hashed_key]
    for url, answer in answers.items():
        text = answer.content.decode()
        assert answer.status_code == 200, url
        assert not [secret for secret in secrets if secret in text], url
        assert 'name="secret"' not in text and 'type="password"' not in text, url  # view only: no form
    assert gateway.key.prefix in answers["/v1/tenant-keys"].content.decode()
    rotated = api.post(f"/v1/tenant-keys/{gateway.key.pk}/rotate")  # a new secret is for operators only
    assert rotated.status_code == 403 and "key" not in rotated.json()
    tenant = SyncApiClient().get("/v1/models", headers={"Authorization": f"Bearer {gateway.raw_key}"})
    assert tenant.status_code == 200
    assert admin.get("/admin/operators/stafftoken/").status_code == 403  # tokens are the superusers'


def test_stored_responses_are_listed_by_tenant_and_shown_read_only(gateway):
    from accounting.models import StoredResponse

    other = tenant_create(slug="globex", name="Globex")
    answer = {"id": "resp_a1", "object": "response", "status": "completed", "model": "gpt-4o-mini",
              "output": [], "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}}
    mine = StoredResponse.objects.create(response_id="resp_a1", tenant=gateway.tenant, response=answer,
                                         input_items=[{"type": "message", "role": "user", "content": "<b>Hi</b>"}])
    StoredResponse.objects.create(response_id="resp_b1", tenant=other, response={**answer, "id": "resp_b1"})

    viewer = staff_client("viewer", group="Gateway viewers")
    listing = viewer.get("/admin/accounting/storedresponse/", {"tenant__id__exact": gateway.tenant.pk})
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "resp_a1" in page and "resp_b1" not in page and "gpt-4o-mini" in page
    detail = viewer.get(f"/admin/accounting/storedresponse/{mine.pk}/change/")
    assert detail.status_code == 200
    shown = detail.content.decode()
    assert "&lt;b&gt;Hi&lt;/b&gt;" in shown and "<b>Hi</b>" not in shown  # the JSON, escaped
    assert 'name="_save"' not in shown  # nothing to save
    assert viewer.post(f"/admin/accounting/storedresponse/{mine.pk}/delete/").status_code == 403
    assert staff_client("nobody").get("/admin/accounting/storedresponse/").status_code == 403
    assert StoredResponse.objects.count() == 2
