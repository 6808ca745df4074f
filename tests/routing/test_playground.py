"""The chat playground page and its feedback endpoint, through Django's test client.

Who may open the page (a tenant member; anyone else is sent to log in or told they need a
membership), which models it offers (the tenant's chat models, never embedding models or another
tenant's routes), and how a reply is rated: one row per response and source, updated on a second
vote; another tenant's response id is a 404 exactly like an unknown one; CSRF is enforced.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.test import Client

from accounting.models import TenantMembership, UsageRecord
from accounting.services import tenant_create
from feedback.models import Feedback
from feedback.services import feedback_submit, feedback_upsert, submission_parse
from kernel.errors import InvalidRequest, NotFound
from providers.models import Provider, ProviderModel
from routing.models import Deployment, RouteGroup, RoutingRule
from tests.conftest import role_join

pytestmark = pytest.mark.django_db(transaction=True)  # the config loads run on database threads: committed data

FEEDBACK_URL = "/playground/feedback"


@pytest.fixture
def acme():
    return tenant_create(slug="acme", name="Acme Corp")


@pytest.fixture
def globex():
    return tenant_create(slug="globex", name="Globex")


@pytest.fixture
def catalog(globex):
    """Two chat models and an embedding model, plus a routed model only globex may use."""
    provider = Provider.objects.create(name="fake", type="openai", api_base="http://127.0.0.1:9/v1")
    mini = ProviderModel.objects.create(provider=provider, alias="gpt-4o-mini", upstream_model="gpt-4o-mini")
    ProviderModel.objects.create(provider=provider, alias="claude-haiku-4-5", upstream_model="claude-haiku-4-5")
    ProviderModel.objects.create(
        provider=provider, alias="text-embedding-3-small", upstream_model="text-embedding-3-small", mode="embedding"
    )
    group = RouteGroup.objects.create(name="globex-group")
    Deployment.objects.create(group=group, provider_model=mini)
    rule = RoutingRule.objects.create(name="globex-only", model="globex-private", group=group)
    rule.tenants.set([globex])


def _user(django_user_model, name, *, tenant=None, staff=False):
    user = django_user_model.objects.create_user(username=name, password="pw-" + name, is_staff=staff)
    if tenant is not None:
        TenantMembership.objects.create(user=user, tenant=tenant)
    return user


@pytest.fixture
def alice(django_user_model, acme):
    return _user(django_user_model, "alice", tenant=acme)


@pytest.fixture
def alice_client(alice):
    client = Client()
    client.force_login(alice)
    return client


def _record(tenant, *, status="success") -> UsageRecord:
    request_id = uuid.uuid4()
    return UsageRecord.objects.create(
        request_id=request_id, response_id=f"chatcmpl-{request_id.hex}", tenant=tenant,
        endpoint="chat.completions", requested_model="gpt-4o-mini", status=status, stream=True,
    )


def _rate(client, response_id, rating, **extra):
    body = json.dumps({"response_id": response_id, "rating": rating})
    return client.post(FEEDBACK_URL, body, content_type="application/json", **extra)


# --- the page -------------------------------------------------------------------------------------
def test_anonymous_is_sent_to_log_in(client):
    response = client.get("/playground/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/playground/"


@pytest.mark.parametrize("staff", [False, True])
def test_user_without_membership_is_told_to_get_one(client, django_user_model, staff):
    client.force_login(_user(django_user_model, "nomad", staff=staff))
    response = client.get("/playground/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "You need a tenant membership to use the playground." in html
    assert 'id="playground"' not in html and "playground.js" not in html


def test_member_of_an_inactive_tenant_gets_the_same_403(client, django_user_model, acme):
    acme.is_active = False
    acme.save()
    client.force_login(_user(django_user_model, "alice", tenant=acme))
    assert client.get("/playground/").status_code == 403


def test_member_sees_their_tenants_chat_models(alice_client, catalog):
    response = alice_client.get("/playground/")

    assert response.status_code == 200
    html = response.content.decode()
    assert re.findall(r'<option value="([^"]+)">', html) == ["claude-haiku-4-5", "gpt-4o-mini"]
    assert "text-embedding-3-small" not in html and "globex-private" not in html
    assert 'data-ws-path="/v1/ws/chat"' in html and 'data-feedback-url="/playground/feedback"' in html
    assert re.search(r'data-csrf-token="[A-Za-z0-9]{32,}"', html)
    assert "/static/routing/playground.js" in html
    assert 'href="/playground/">Playground</a>' in html  # the nav link of the dashboards' top bar


def test_member_of_the_routed_tenant_sees_its_route(client, django_user_model, globex, catalog):
    client.force_login(_user(django_user_model, "bob", tenant=globex))
    options = re.findall(r'<option value="([^"]+)">', client.get("/playground/").content.decode())
    assert options == ["claude-haiku-4-5", "globex-private", "gpt-4o-mini"]


def test_member_without_chat_models_is_told_so(alice_client):
    html = alice_client.get("/playground/").content.decode()
    assert 'data-playground="no-models"' in html and "<option" not in html


def test_dashboard_links_members_only_to_the_playground(client, django_user_model, alice):
    client.force_login(alice)
    assert 'href="/playground/"' in client.get("/dashboard/acme/").content.decode()
    olga = _user(django_user_model, "olga", staff=True)
    role_join(olga, "Gateway viewers")  # the all-tenants page, which staff status alone no longer opens
    client.force_login(olga)
    page = client.get("/dashboard/")
    assert page.status_code == 200 and 'href="/playground/"' not in page.content.decode()


# --- feedback -------------------------------------------------------------------------------------
def test_rating_again_updates_the_same_row(alice_client, acme):
    record = _record(acme)

    first = _rate(alice_client, record.response_id, 1)
    assert first.status_code == 201
    assert first.json()["rating"] == 1 and first.json()["source"] == "playground"
    second = _rate(alice_client, record.response_id, -1)
    assert second.status_code == 200 and second.json()["rating"] == -1

    [feedback] = Feedback.objects.all()
    assert (feedback.tenant_id, feedback.usage_record_id, feedback.response_id) == (
        acme.pk, record.pk, record.response_id
    )
    assert (feedback.source, feedback.rating) == ("playground", -1)


def test_cancelled_responses_can_be_rated(alice_client, acme):
    record = _record(acme, status="cancelled")
    assert _rate(alice_client, record.response_id, -1).status_code == 201


def test_another_tenants_response_is_not_found_like_an_unknown_one(alice_client, globex):
    theirs = _record(globex)

    other = _rate(alice_client, theirs.response_id, 1)
    unknown = _rate(alice_client, "chatcmpl-" + uuid.uuid4().hex, 1)

    assert other.status_code == unknown.status_code == 404
    assert other.json() == unknown.json()
    assert other.json()["error"]["code"] == "response_not_found"
    assert not Feedback.objects.exists()


@pytest.mark.parametrize("rating", [0, 2, -2, "1", True, None, 1.5])
def test_bad_rating_is_a_400(alice_client, acme, rating):
    record = _record(acme)
    response = _rate(alice_client, record.response_id, rating)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "rating"
    assert not Feedback.objects.exists()


@pytest.mark.parametrize(
    "body", ["not json", "[1, -1]", json.dumps({"rating": 1}), json.dumps({"response_id": 7, "rating": 1})]
)
def test_malformed_body_is_a_400(alice_client, body):
    response = alice_client.post(FEEDBACK_URL, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_feedback_needs_a_logged_in_member(client, django_user_model, acme):
    record = _record(acme)
    assert _rate(client, record.response_id, 1).status_code == 401
    client.force_login(_user(django_user_model, "nomad"))
    response = _rate(client, record.response_id, 1)
    assert response.status_code == 403 and response.json()["error"]["code"] == "membership_required"
    assert not Feedback.objects.exists()


def test_feedback_is_post_only(alice_client):
    response = alice_client.get(FEEDBACK_URL)
    assert response.status_code == 405 and response["Allow"] == "POST"


def test_csrf_is_enforced(alice, acme):
    record = _record(acme)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    assert _rate(client, record.response_id, 1).status_code == 403
    assert not Feedback.objects.exists()

    page = client.get("/playground/").content.decode()
    token = re.search(r'data-csrf-token="([^"]+)"', page).group(1)
    assert _rate(client, record.response_id, 1, HTTP_X_CSRFTOKEN=token).status_code == 201
    assert Feedback.objects.get().rating == 1


# --- the service ----------------------------------------------------------------------------------
def test_service_scopes_to_the_tenant_and_keeps_sources_apart(acme, globex):
    record = _record(acme)
    with pytest.raises(NotFound):
        feedback_upsert(tenant_id=globex.pk, response_id=record.response_id, rating=1)
    with pytest.raises(InvalidRequest):
        feedback_upsert(tenant_id=acme.pk, response_id="", rating=1)
    with pytest.raises(InvalidRequest):
        feedback_upsert(tenant_id=acme.pk, response_id=record.response_id, rating=False)

    _, created = feedback_upsert(tenant_id=acme.pk, response_id=record.response_id, rating=1)
    _, created_api = feedback_submit(tenant_id=acme.pk, submission=submission_parse(
        {"response_id": record.response_id, "rating": -1, "source": "api", "comment": "too long"}
    ))
    assert created and created_api
    assert sorted(Feedback.objects.values_list("source", "rating", "comment")) == [
        ("api", -1, "too long"), ("playground", 1, ""),
    ]
