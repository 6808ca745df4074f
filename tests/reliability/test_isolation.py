"""Tenant isolation swept across every route of the URLconf and every WebSocket message type.

Two tenants, A ("alpha") and B ("bravo"), each with keys, a dashboard member, usage records,
rollups, feedback, cache entries, a budget, a B-only routing rule and a guardrail event. Then, with
A's key and with A's member login, every route is called with B's ids, slugs, response ids,
conversation ids, cache names and models, and again with ids that do not exist:

- no answer carries anything of B's (its markers below);
- "B's thing" and "a thing that does not exist" get the same status and the same body, once the
  probe itself and request ids are masked, so nothing can be inferred;
- every operator route refuses a tenant key (401) and a member session;
- every admin route sends a member to the login page.

The routes come from the URLconf (`get_resolver()`), not from a list kept by hand: a route added
later that no probe below covers fails `test_every_route_is_swept`, naming it. The WebSocket
message types come from the consumer's dispatcher the same way.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from tests.asgi_client import SyncApiClient

pytestmark = pytest.mark.django_db(transaction=True)

B_SLUG = "bravo-tenant"
B_NAME = "Bravo Industries Secret"
B_MODEL = "bravo-only-model"
B_TASK = "bravo-task-marker"
B_USER = "bravo-end-user-marker"
B_CONVERSATION = "bravo-conversation-4242"
B_CORRECTION = "bravo correction marker text"
B_PROMPT = "bravo prompt marker quince"
B_METRIC = "bravo-metric-marker"
MISSING_SLUG = "zzzzz-tenant"  # same length as nothing in particular: the probe is masked anyway
MISSING_MODEL = "no-such-model-here"
UUID_RE = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="[^"]+"|csrftoken=[^;"]+')


@dataclass
class World:
    a_auth: dict
    b_auth: dict
    b_raw_key: str
    a_member: object
    b_member: object
    b_tenant_id: int
    b_key_id: int
    b_key_prefix: str
    b_response_id: str
    b_budget_id: int
    b_rule_id: int
    b_feedback_id: int
    b_guardrail_response_id: str
    b_stored_response_id: str = ""  # a Responses API answer B stored (resp_...)
    b_file_id: str = ""  # B's batch input file (file-...)
    b_batch_id: str = ""  # B's batch (batch_...)
    a_response_id: str = ""

    def markers(self) -> list[str]:
        """Strings only B's data holds: none may appear in an answer to A."""
        return [B_SLUG, B_NAME, B_MODEL, B_METRIC, B_TASK, B_USER, B_CONVERSATION, B_CORRECTION, B_PROMPT,
                self.b_raw_key, self.b_key_prefix, self.b_response_id, self.b_guardrail_response_id,
                self.b_stored_response_id, self.b_file_id, self.b_batch_id]


def _chat_body(content: str, **extra) -> str:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra})


@pytest.fixture
def world(gateway, settings) -> World:
    from accounting.models import Budget, TenantMembership
    from accounting.rollups import rollup_recent
    from accounting.services import api_key_create, tenant_create
    from feedback.models import Feedback, FeedbackMetric
    from feedback.rollups import feedback_rollup_recent
    from guardrails.models import GuardrailEvent
    from providers.models import ProviderModel
    from routing.models import Deployment, RouteGroup, RoutingRule

    settings.GATEWAY_CONFIG_CACHE_SECONDS = 0
    alpha = gateway.tenant
    bravo = tenant_create(slug=B_SLUG, name=B_NAME)
    bravo.keep_content = True  # B's Responses API answers are stored
    bravo.save()
    b_key, b_raw = api_key_create(tenant=bravo, name="bravo-key", allowed_models=["gpt-4o-mini", B_MODEL])
    group = RouteGroup.objects.create(name="bravo-group")
    Deployment.objects.create(group=group, provider_model=ProviderModel.objects.get(alias="gpt-4o-mini"))
    rule = RoutingRule.objects.create(name="bravo-rule", model=B_MODEL, group=group)
    rule.tenants.add(bravo)
    users = get_user_model()
    a_member = users.objects.create_user("alpha-member", "alpha@example.com", "pw-alpha-123")
    b_member = users.objects.create_user("bravo-member", "bravo@example.com", "pw-bravo-123")
    TenantMembership.objects.create(user=a_member, tenant=alpha)
    TenantMembership.objects.create(user=b_member, tenant=bravo)
    budget = Budget.objects.create(tenant=bravo, amount_usd="5", period="monthly")

    b_auth, a_auth = {"Authorization": f"Bearer {b_raw}"}, gateway.auth
    client = SyncApiClient()
    for auth, content, extra in (
        (b_auth, B_PROMPT, {"user": B_USER, "metadata": {"task": B_TASK, "conversation_id": B_CONVERSATION},
                            "temperature": 0}),
        (b_auth, B_PROMPT, {"model": B_MODEL, "temperature": 0}),
        (a_auth, "alpha prompt", {"temperature": 0}),
    ):
        body = json.loads(_chat_body(content, **extra))
        answer = client.post("/v1/chat/completions", json.dumps(body), content_type="application/json",
                             headers=auth)
        assert answer.status_code == 200, answer.content
        if auth is b_auth and "user" in body:
            b_response_id = answer.json()["id"]
        if auth is a_auth:
            a_response_id = answer.json()["id"]
    stored = client.post("/v1/responses", json.dumps({"model": "gpt-4o-mini", "input": B_PROMPT}),
                         content_type="application/json", headers=b_auth)
    assert stored.status_code == 200, stored.content
    FeedbackMetric.objects.create(tenant=bravo, name=B_METRIC)
    posted = client.post("/v1/feedback", json.dumps({"response_id": b_response_id, "rating": "down",
                                                     "correction": B_CORRECTION}),
                         content_type="application/json", headers=b_auth)
    assert posted.status_code == 201, posted.content
    guardrail_response_id = "chatcmpl-bravoguardrail0001"
    GuardrailEvent.objects.create(tenant=bravo, request_id=uuid.uuid4(), response_id=guardrail_response_id,
                                  kind="pii_email", direction="input", action="flag", location="messages[0]")
    from batches.models import Batch, BatchFile

    b_file = BatchFile.objects.create(tenant=bravo, purpose="batch", filename="bravo.jsonl", name="bravo.jsonl",
                                      bytes=10, lines=1)
    b_batch = Batch.objects.create(tenant=bravo, api_key=b_key, input_file=b_file, input_file_key=b_file.id,
                                   endpoint="/v1/chat/completions", status="in_progress", total=1,
                                   expires_at=timezone.now() + timedelta(hours=24))
    rollup_recent()
    feedback_rollup_recent()
    return World(
        a_auth=gateway.auth, b_auth=b_auth, b_raw_key=b_raw, a_member=a_member, b_member=b_member,
        b_tenant_id=bravo.pk, b_key_id=b_key.pk, b_key_prefix=b_key.prefix, b_response_id=b_response_id,
        b_budget_id=budget.pk, b_rule_id=rule.pk, b_feedback_id=Feedback.objects.get().pk,
        b_guardrail_response_id=guardrail_response_id, a_response_id=a_response_id,
        b_stored_response_id=stored.json()["id"], b_file_id=b_file.id, b_batch_id=b_batch.id,
    )


# --- the routes, from the URLconf ---------------------------------------------------------------
def _routes(patterns=None, prefix: str = "", namespace: str = "") -> list[tuple[str, str]]:
    """(route text, qualified name) of every URL pattern, walking includes."""
    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            inner = ":".join(filter(None, [namespace, pattern.namespace or ""]))
            found += _routes(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            name = ":".join(filter(None, [namespace, pattern.name or ""]))
            found.append((prefix + str(pattern.pattern), name))
    return found


def _family(route: str, name: str) -> str:
    """Which probe covers a route; 'unswept' fails the sweep."""
    if route.startswith("admin/"):
        return "admin"
    if name.startswith("operator-"):
        return "operator"
    return PROBED.get(name, "unswept")


PROBED = {  # route name -> the probe below that covers it
    "chat-completions": "tenant_api", "completions": "tenant_api", "embeddings": "tenant_api", "models": "tenant_api",
    "messages": "tenant_api", "messages-count-tokens": "tenant_api", "usage": "tenant_api",
    "cache-stats": "tenant_api", "cache-clear": "tenant_api", "feedback": "tenant_api",
    "responses": "tenant_api", "response-detail": "tenant_api", "response-input-items": "tenant_api",
    "images-generations": "tenant_api", "audio-transcriptions": "tenant_api", "audio-translations": "tenant_api",
    "audio-speech": "tenant_api", "moderations": "tenant_api", "rerank-v1": "tenant_api", "rerank-v2": "tenant_api",
    "files": "tenant_api", "file-detail": "tenant_api", "file-content": "tenant_api", "batches": "tenant_api",
    "batch-detail": "tenant_api", "batch-cancel": "tenant_api",
    "dashboard:batches": "dashboard", "dashboard:tenant-batches": "dashboard",
    "response-cancel": "tenant_api", "response-input-tokens": "tenant_api",
    "": "tenant_api",  # the /v1/ catch-all 404
    "dashboard:index": "dashboard", "dashboard:export-tenants": "dashboard", "dashboard:feedback": "dashboard",
    "dashboard:feedback-corrections": "dashboard", "dashboard:tenant": "dashboard",
    "dashboard:export": "dashboard", "dashboard:tenant-feedback": "dashboard",
    "dashboard:tenant-feedback-corrections": "dashboard",
    "dashboard:requests": "dashboard", "dashboard:requests-export": "dashboard",
    "dashboard:tenant-requests": "dashboard", "dashboard:tenant-requests-export": "dashboard",
    "dashboard:request-detail": "dashboard", "front-door": "dashboard",
    "dashboard:keys": "dashboard", "dashboard:members": "dashboard", "dashboard:settings": "dashboard",
    "dashboard:key": "selfservice", "dashboard:key-revoke": "selfservice", "dashboard:key-rotate": "selfservice",
    "dashboard:member-role": "selfservice", "dashboard:member-remove": "selfservice",
    "playground:index": "playground", "playground:feedback": "playground",
    "login": "accounts", "logout": "accounts", "password_change": "accounts", "password_change_done": "accounts",
    "password_reset": "accounts", "password_reset_done": "accounts", "password_reset_confirm": "accounts",
    "password_reset_complete": "accounts",
    "health": "public", "ready": "public", "metrics": "public", "schema": "public", "api-docs": "public",
    "api-redoc": "public",
}


def test_every_route_is_swept():
    unswept = [route for route, name in _routes() if _family(route, name) == "unswept"]
    assert not unswept, f"routes no isolation probe covers (add one to tests/reliability/test_isolation.py): {unswept}"


def test_every_schema_path_is_a_swept_route(client):
    from django.urls import resolve

    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in schema["paths"]:
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        match = resolve(concrete)
        route = match.route
        assert _family(route, match.view_name) != "unswept", f"{path} ({match.view_name}) is not swept"


# --- comparing answers ----------------------------------------------------------------------------
def _text(response) -> str:
    if getattr(response, "streaming", False):  # CSV and JSONL exports, from Django's test client
        # Iterating the response (not its streaming_content) consumes an async iterator too.
        response._iso_text = getattr(response, "_iso_text", None) or b"".join(response)
        return response._iso_text.decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


def _normal(response, probe: str) -> tuple[int, str, str]:
    body = _text(response).replace(probe, "<probe>")
    body = CSRF_RE.sub("<csrf>", UUID_RE.sub("<uuid>", body))
    return response.status_code, response.headers.get("content-type", ""), body


def _assert_clean(response, world: World, what: str, sent: str = "") -> None:
    """No marker of B's in the answer, except the probe A sent itself (an error may quote it)."""
    text = _text(response) + json.dumps(dict(response.headers))
    text = text.replace(sent, "<probe>") if sent else text
    for marker in world.markers():
        assert marker not in text, f"{what}: B's {marker!r} is in the answer to A"
    assert response.status_code < 500, f"{what}: {response.status_code}"


def _assert_same(theirs, missing, theirs_probe: str, missing_probe: str, what: str) -> None:
    assert _normal(theirs, theirs_probe) == _normal(missing, missing_probe), (
        f"{what}: B's thing and a missing thing are told apart"
    )


def _pairs(world: World) -> list[tuple[str, str, str]]:
    """(what, B's value, a value of the same shape that exists nowhere)."""
    fake_response = "chatcmpl-" + "0" * (len(world.b_response_id) - len("chatcmpl-"))
    return [
        ("response_id", world.b_response_id, fake_response),
        ("guardrail response_id", world.b_guardrail_response_id, "chatcmpl-nothinghere000000"),
        ("stored response id", world.b_stored_response_id,
         "resp_" + "0" * (len(world.b_stored_response_id) - len("resp_"))),
        ("conversation_id", B_CONVERSATION, "nobody-conversation-99"),
        ("file id", world.b_file_id, "file-" + "0" * (len(world.b_file_id) - len("file-"))),
        ("batch id", world.b_batch_id, "batch_" + "0" * (len(world.b_batch_id) - len("batch_"))),
        ("tenant", B_SLUG, MISSING_SLUG),
        ("model", B_MODEL, MISSING_MODEL),
        ("feedback metric", B_METRIC, "nobody-metric-marker"),
    ]


# --- the tenant API with A's key ------------------------------------------------------------------
TENANT_API_CALLS = [  # (method, path template, body template or None); {v} is the probe
    ("GET", "/v1/feedback?response_id={v}", None),
    ("GET", "/v1/feedback?conversation_id={v}", None),
    ("POST", "/v1/feedback", {"response_id": "{v}", "rating": "up"}),
    ("POST", "/v1/feedback", {"conversation_id": "{v}", "rating": "up"}),
    ("POST", "/v1/feedback", {"response_id": "{v}", "correction": "overwrite"}),
    ("POST", "/v1/feedback", {"response_id": "{a}", "metrics": {"{v}": 1}}),
    ("GET", "/v1/cache/stats?tenant={v}", None),
    ("DELETE", "/v1/cache?tenant={v}", None),
    ("GET", "/v1/usage?group_by=model&tenant={v}", None),
    ("GET", "/v1/models?tenant={v}", None),
    ("POST", "/v1/chat/completions", {"model": "{v}", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/chat/completions", {"model": "{v}", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/completions", {"model": "{v}", "prompt": "hi"}),
    ("POST", "/v1/responses", {"model": "{v}", "input": "hi"}),
    ("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "previous_response_id": "{v}"}),
    ("GET", "/v1/responses/{v}", None),
    ("GET", "/v1/responses/{v}/input_items", None),
    ("DELETE", "/v1/responses/{v}", None),
    ("POST", "/v1/responses/{v}/cancel", None),
    ("POST", "/v1/responses/input_tokens", {"model": "gpt-4o-mini", "input": "hi", "previous_response_id": "{v}"}),
    ("POST", "/v1/embeddings", {"model": "{v}", "input": "hi"}),
    ("POST", "/v1/messages", {"model": "{v}", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/messages/count_tokens", {"model": "{v}", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/images/generations", {"model": "{v}", "prompt": "a cat"}),
    ("POST", "/v1/audio/speech", {"model": "{v}", "input": "hi", "voice": "alloy"}),
    ("POST", "/v1/audio/transcriptions", {"model": "{v}"}),  # not multipart: refused alike
    ("POST", "/v1/audio/translations", {"model": "{v}"}),
    ("POST", "/v1/moderations", {"model": "{v}", "input": "hi"}),
    ("POST", "/v1/rerank", {"model": "{v}", "query": "q", "documents": ["a", "b"]}),
    ("POST", "/v2/rerank", {"model": "{v}", "query": "q", "documents": ["a", "b"]}),
    ("GET", "/v1/files/{v}", None),
    ("GET", "/v1/files/{v}/content", None),
    ("DELETE", "/v1/files/{v}", None),
    ("GET", "/v1/files?after={v}", None),
    ("POST", "/v1/batches", {"input_file_id": "{v}", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    ("GET", "/v1/batches/{v}", None),
    ("POST", "/v1/batches/{v}/cancel", None),
    ("GET", "/v1/batches?after={v}", None),
    ("GET", "/v1/{v}", None),
]


def _fill(template, value: str, own_response_id: str = ""):
    if template is None:
        return None
    return json.loads(json.dumps(template).replace("{v}", value).replace("{a}", own_response_id))


def _call(client: Client | SyncApiClient, method: str, path: str, body, headers: dict):
    data = json.dumps(body) if body is not None else ""
    return client.generic(method, path, data, content_type="application/json", headers=headers)


def test_tenant_key_never_reads_changes_or_infers_the_other_tenants_data(world):
    from feedback.models import Feedback

    client = SyncApiClient()
    for method, path, body in TENANT_API_CALLS:
        for what, theirs, missing in _pairs(world):
            answers = [
                _call(client, method, path.replace("{v}", value), _fill(body, value, world.a_response_id), world.a_auth)
                for value in (theirs, missing)
            ]
            label = f"{method} {path} with B's {what}"
            for answer in answers:
                _assert_clean(answer, world, label, sent=theirs)
            _assert_same(*answers, theirs, missing, label)
            if what == "feedback metric" and "metrics" in (body or {}):  # reached the metric lookup
                assert answers[0].json()["error"]["code"] == "unknown_metric", answers[0].content
    feedback = Feedback.objects.get(pk=world.b_feedback_id)
    assert (feedback.rating, feedback.correction) == (-1, B_CORRECTION), "A changed B's feedback"
    assert Feedback.objects.filter(tenant_id=world.b_tenant_id).count() == 1
    kept = client.get(f"/v1/responses/{world.b_stored_response_id}", headers=world.b_auth)
    assert kept.status_code == 200, "A deleted B's stored response"
    from batches.models import Batch, BatchFile

    assert BatchFile.objects.filter(pk=world.b_file_id).exists(), "A deleted B's file"
    assert Batch.objects.get(pk=world.b_batch_id).status == "in_progress", "A cancelled B's batch"
    assert Batch.objects.filter(tenant_id=world.b_tenant_id).count() == 1, "A made a batch of B's file"


def test_tenant_key_reads_only_its_own_lists(world):
    client = SyncApiClient()
    for path in ("/v1/models", "/v1/usage?group_by=model", "/v1/usage?group_by=key", "/v1/usage?group_by=day",
                 "/v1/usage?group_by=route", "/v1/cache/stats"):
        answer = client.get(path, headers=world.a_auth)
        assert answer.status_code == 200, (path, answer.content)
        _assert_clean(answer, world, f"GET {path}")


def test_cache_entries_never_cross_tenants(world):
    client = SyncApiClient()
    # B asked this exact deterministic request first; A's identical request is a miss, not B's answer.
    body = _chat_body(B_PROMPT, temperature=0, user=B_USER,
                      metadata={"task": B_TASK, "conversation_id": B_CONVERSATION})
    again_b = client.post("/v1/chat/completions", body, content_type="application/json", headers=world.b_auth)
    assert again_b.headers["x-gateway-cache"] == "hit"
    for_a = client.post("/v1/chat/completions", body, content_type="application/json", headers=world.a_auth)
    assert for_a.status_code == 200 and for_a.headers["x-gateway-cache"] != "hit"
    assert for_a.json()["id"] != again_b.json()["id"]
    # A clearing its cache leaves B's entries in place.
    assert client.delete("/v1/cache", headers=world.a_auth).status_code == 200
    still = client.post("/v1/chat/completions", body, content_type="application/json", headers=world.b_auth)
    assert still.headers["x-gateway-cache"] == "hit"


def test_operator_routes_refuse_tenant_keys_and_member_sessions(world, settings):
    # Hundreds of refused keys from one address on purpose: each must be refused as a key (401),
    # not as an address that failed too often (tests/gateway_site/test_auth_throttle.py).
    settings.GATEWAY_AUTH_FAILURES_PER_MINUTE = 0
    member = Client()
    member.force_login(world.a_member)
    ids = [world.b_key_id, world.b_budget_id]  # B's (tenant, key, budget share small ids anyway)
    routes = [route for route, name in _routes() if _family(route, name) == "operator"]
    assert len(routes) >= 15
    for route in routes:
        for pk in ids:
            path = "/" + re.sub(r"\(\?P<pk>[^)]*\)", str(pk), route).replace("^", "").replace("$", "")
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                body = {"tenant": world.b_tenant_id, "revoked": True}
                keyed = _call(Client(), method, path, body, world.a_auth)
                assert keyed.status_code == 401, (method, path, keyed.content)
                _assert_clean(keyed, world, f"{method} {path} with A's key")
                session = _call(member, method, path, body, {})
                assert session.status_code in (401, 403), (method, path, session.status_code)
                _assert_clean(session, world, f"{method} {path} as A's member")
    from accounting.models import TenantApiKey

    assert not TenantApiKey.objects.get(pk=world.b_key_id).revoked


def test_admin_routes_send_a_member_to_the_login_page(world):
    member = Client()
    member.force_login(world.a_member)
    routes = [route for route, _ in _routes() if _family(route, "") == "admin"]
    assert len(routes) > 50
    for route in routes:
        path = "/" + re.sub(r"<[^>]+>|\(\?P<[^>]+>[^)]*\)", str(world.b_tenant_id), route)
        path = path.replace("^", "").replace("$", "")
        if path.rstrip("/").endswith(("login", "logout")):
            continue
        answer = member.get(path)
        if answer.status_code == 302:
            assert "/admin/login/" in answer["location"], (path, answer["location"])
        else:  # a pattern no concrete URL reaches (e.g. the catch-all of an app label)
            assert answer.status_code == 404, (path, answer.status_code)
        _assert_clean(answer, world, f"GET {path} as A's member")


# --- dashboards, playground, accounts with A's member login -----------------------------------------
DASHBOARD_SLUG_PATHS = ["/dashboard/{v}/", "/dashboard/{v}/?range=30d", "/dashboard/{v}/export.csv?table=models",
                        "/dashboard/{v}/export.csv?table=timeline", "/dashboard/{v}/feedback/",
                        "/dashboard/{v}/feedback/corrections.jsonl", "/dashboard/{v}/requests/",
                        "/dashboard/{v}/requests/?status=ok&since=2020-01-01", "/dashboard/{v}/requests/export.csv",
                        "/dashboard/{v}/keys/", "/dashboard/{v}/batches/", "/dashboard/{v}/members/", "/dashboard/{v}/settings/"]


def test_member_dashboards_never_show_or_confirm_the_other_tenant(world):
    member = Client()
    member.force_login(world.a_member)
    for path in DASHBOARD_SLUG_PATHS:
        theirs, missing = (member.get(path.replace("{v}", slug)) for slug in (B_SLUG, MISSING_SLUG))
        assert theirs.status_code == 404
        for answer in (theirs, missing):
            _assert_clean(answer, world, f"GET {path} with B's slug", sent=B_SLUG)
        _assert_same(theirs, missing, B_SLUG, MISSING_SLUG, f"GET {path}")
        own = member.get(path.replace("{v}", "acme"))
        assert own.status_code == 200, (path, own.status_code)
        _assert_clean(own, world, f"GET {path} for A's own tenant")
    for path in ("/", "/dashboard/", "/dashboard/export.csv", "/dashboard/batches/", "/dashboard/feedback/", "/dashboard/feedback/corrections.jsonl",
                 "/dashboard/requests/", "/dashboard/requests/export.csv", f"/dashboard/requests/?tenant={B_SLUG}",
                 f"/dashboard/requests/export.csv?tenant={B_SLUG}"):
        answer = member.get(path, follow=True)
        _assert_clean(answer, world, f"GET {path} as A's member", sent=B_SLUG if "tenant=" in path else "")


def test_tenant_admin_pages_never_reach_the_other_tenants_keys_or_members(world):
    """A's own admin, on A's self-service pages, names B's key and B's membership by id: each is
    the 404 of an id that exists nowhere, and B's key and member are untouched."""
    from accounting.models import TenantApiKey, TenantMembership

    TenantMembership.objects.filter(user=world.a_member).update(role="admin")
    b_membership = TenantMembership.objects.get(user=world.b_member)
    member = Client()
    member.force_login(world.a_member)
    missing = 10**9
    probes = [("GET", "/dashboard/{s}/keys/{v}/", world.b_key_id), ("POST", "/dashboard/{s}/keys/{v}/revoke", world.b_key_id),
              ("POST", "/dashboard/{s}/keys/{v}/rotate", world.b_key_id),
              ("POST", "/dashboard/{s}/members/{v}/role", b_membership.pk),
              ("POST", "/dashboard/{s}/members/{v}/remove", b_membership.pk)]
    for method, path, theirs in probes:
        for slug in ("acme", B_SLUG):
            answers = [_call(member, method, path.format(s=slug, v=value), {"role": "viewer"}, {})
                       for value in (theirs, missing)]
            assert [answer.status_code for answer in answers] == [404, 404], (method, path, slug)
            for answer in answers:
                _assert_clean(answer, world, f"{method} {path} as A's admin")
            _assert_same(*answers, str(theirs), str(missing), f"{method} {path} ({slug})")
    b_key = TenantApiKey.objects.get(pk=world.b_key_id)
    assert not b_key.revoked and b_key.prefix == world.b_key_prefix
    assert TenantMembership.objects.get(pk=b_membership.pk).role == b_membership.role


def test_member_request_logs_never_show_or_confirm_the_other_tenants_requests(world):
    from accounting.models import UsageRecord

    member = Client()
    member.force_login(world.a_member)
    b_ids = [str(value) for value in UsageRecord.objects.filter(tenant_id=world.b_tenant_id)
             .values_list("request_id", flat=True)]
    assert b_ids
    probes = [("request id", b_id, str(uuid.uuid4())) for b_id in b_ids] + _pairs(world)
    paths = ["/dashboard/acme/requests/{v}/", "/dashboard/acme/requests/?request_id={v}",
             "/dashboard/acme/requests/export.csv?request_id={v}"]
    paths += [f"/dashboard/acme/requests/?{name}={{v}}" for name in ("model", "user", "tag", "route", "variant",
                                                                      "provider")]
    paths += ["/dashboard/acme/requests/export.csv?model={v}", "/dashboard/acme/requests/export.csv?tag={v}"]
    for what, theirs, missing in probes:
        for path in paths:
            answers = [member.get(path.replace("{v}", value)) for value in (theirs, missing)]
            for answer in answers:
                _assert_clean(answer, world, f"GET {path} with B's {what}", sent=theirs)
            _assert_same(*answers, theirs, missing, f"GET {path} with B's {what}")


def test_playground_never_shows_or_rates_the_other_tenants_responses(world):
    from feedback.models import Feedback

    member = Client()
    member.force_login(world.a_member)
    page = member.get("/playground/")
    assert page.status_code == 200
    _assert_clean(page, world, "GET /playground/")
    for what, theirs, missing in _pairs(world):
        answers = [member.post("/playground/feedback", json.dumps({"response_id": value, "rating": 1}),
                               content_type="application/json") for value in (theirs, missing)]
        for answer in answers:
            _assert_clean(answer, world, f"POST /playground/feedback with B's {what}", sent=theirs)
        _assert_same(*answers, theirs, missing, f"POST /playground/feedback with B's {what}")
    assert Feedback.objects.filter(tenant_id=world.b_tenant_id).get().rating == -1


def test_accounts_pages_do_not_tell_whether_a_user_exists(world):
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    client = Client()
    reset = [client.post("/accounts/password_reset/", {"email": email})
             for email in ("bravo@example.com", "nobody@example.com")]
    _assert_same(*reset, "bravo@example.com", "nobody@example.com", "password reset")
    confirm = [client.get(f"/accounts/reset/{urlsafe_base64_encode(force_bytes(pk))}/set-password/", follow=True)
               for pk in (world.b_member.pk, 10**9)]
    _assert_same(*confirm, "", "", "password reset confirm")
    login = [client.post("/accounts/login/", {"username": name, "password": "wrong-password"})
             for name in ("bravo-member", "nobody-member")]
    _assert_same(*login, "bravo-member", "nobody-member", "login")
    member = Client()
    member.force_login(world.a_member)
    for path in ("/accounts/password_change/", "/accounts/password_change/done/", "/accounts/password_reset/done/",
                 "/accounts/reset/done/", "/accounts/login/"):
        _assert_clean(member.get(path), world, f"GET {path} as A's member")


def test_public_routes_carry_no_tenant_data(world):
    client = Client()
    for path in ("/health", "/ready", "/api/schema/", "/api/docs/", "/api/redoc/"):
        _assert_clean(client.get(path), world, f"GET {path}")
    # /metrics is for operators (a token or an allowed peer): a tenant key from elsewhere gets nothing.
    outside = client.get("/metrics", headers=world.a_auth, REMOTE_ADDR="203.0.113.9")
    assert outside.status_code in (401, 403)
    _assert_clean(outside, world, "GET /metrics from outside")
    member = Client(REMOTE_ADDR="203.0.113.9")
    member.force_login(world.a_member)
    assert member.get("/metrics").status_code in (401, 403)


# --- the WebSocket ------------------------------------------------------------------------------
WS_PROBED = {"ping", "auth", "chat.request", "chat.cancel"}


def test_every_websocket_message_type_is_swept():
    from routing.consumers import ChatConsumer

    handled = set(re.findall(r'kind == "([a-z._]+)"', inspect.getsource(ChatConsumer._dispatch)))
    assert handled == WS_PROBED, f"message types the isolation sweep does not cover: {handled - WS_PROBED}"


async def _socket(auth: dict) -> WebsocketCommunicator:
    from gateway_site.asgi import application

    headers = [(b"authorization", auth["Authorization"].encode())]
    socket = WebsocketCommunicator(application, "/v1/ws/chat", headers=headers)
    connected, _ = await socket.connect()
    assert connected
    assert (await socket.receive_json_from(timeout=5))["type"] == "auth.ok"
    return socket


async def _until(socket: WebsocketCommunicator, kind: str, request_id: str) -> dict:
    while True:
        event = await socket.receive_json_from(timeout=10)
        if event.get("id") == request_id and event["type"] in (kind, "error"):
            return event


def _event_text(event: dict, probe: str) -> str:
    return UUID_RE.sub("<uuid>", json.dumps(event, sort_keys=True).replace(probe, "<probe>"))


async def test_websocket_messages_with_the_other_tenants_ids(world):
    b_socket = await _socket(world.b_auth)
    a_socket = await _socket(world.a_auth)
    try:
        # chat.request naming B's model: the same error as a model that does not exist.
        events = {}
        for probe in (B_MODEL, MISSING_MODEL):
            await a_socket.send_json_to({"type": "chat.request", "id": f"req-{probe}", "model": probe,
                                         "messages": [{"role": "user", "content": "hi"}]})
            events[probe] = await _until(a_socket, "chat.done", f"req-{probe}")
        assert events[B_MODEL]["type"] == "error"
        assert _event_text(events[B_MODEL], B_MODEL) == _event_text(events[MISSING_MODEL], MISSING_MODEL)
        # B starts a slow stream; A cancelling B's request id on its own socket is "no such request".
        await b_socket.send_json_to({"type": "chat.request", "id": "bravo-req-1", "model": "gpt-4o-mini",
                                     "messages": [{"role": "user", "content": "[[fake chunks=6 chunk_delay_ms=150]] hi"}]})
        first = await b_socket.receive_json_from(timeout=10)
        assert first["type"] == "chat.delta", first
        cancels = {}
        for probe in ("bravo-req-1", "nobody-req-1"):
            await a_socket.send_json_to({"type": "chat.cancel", "id": probe})
            cancels[probe] = await a_socket.receive_json_from(timeout=5)
        assert cancels["bravo-req-1"]["type"] == "error"
        assert _event_text(cancels["bravo-req-1"], "bravo-req-1") == _event_text(cancels["nobody-req-1"], "nobody-req-1")
        done = await _until(b_socket, "chat.done", "bravo-req-1")
        assert done["type"] == "chat.done", done
        # ping and a bogus auth message carry nothing of B's either.
        await a_socket.send_json_to({"type": "ping", "id": world.b_response_id})
        pong = await a_socket.receive_json_from(timeout=5)
        assert pong == {"type": "pong", "id": world.b_response_id}
    finally:
        await a_socket.disconnect()
        await b_socket.disconnect()
    for probe in (world.b_key_prefix + "x" * 20, "sk-gw-" + "n" * 43):
        socket = await _socket(world.a_auth)
        await socket.send_json_to({"type": "auth", "api_key": probe})
        refused = await socket.receive_json_from(timeout=5)
        assert refused["type"] == "error" and refused["status"] == 401
        assert B_SLUG not in json.dumps(refused) and probe not in json.dumps(refused)
        await socket.disconnect()


async def test_websocket_member_session_sees_only_its_tenant(world):
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from gateway_site.asgi import application

    def session_for(user) -> str:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.save()
        return store.session_key

    key = await sync_to_async(session_for)(world.a_member)
    socket = WebsocketCommunicator(application, "/v1/ws/chat", headers=[
        (b"origin", b"http://testserver"), (b"host", b"testserver"), (b"cookie", f"sessionid={key}".encode()),
    ])
    connected, _ = await socket.connect()
    assert connected
    ok = await socket.receive_json_from(timeout=5)
    assert ok == {"type": "auth.ok", "tenant": "acme"}
    await socket.send_json_to({"type": "chat.request", "id": "m1", "model": B_MODEL,
                               "messages": [{"role": "user", "content": "hi"}]})
    refused = await _until(socket, "chat.done", "m1")
    assert refused["type"] == "error" and B_SLUG not in json.dumps(refused)
    await socket.disconnect()


def test_the_comparisons_catch_a_difference_and_a_leak():
    """The sweep's own checks can fail: a distinguishable answer, and an answer carrying B's data."""
    from django.http import HttpResponse

    world = World(**{name: 0 for name in World.__dataclass_fields__})
    world.b_raw_key, world.b_key_prefix, world.b_response_id, world.b_guardrail_response_id = "k", "p", "r", "g"
    hidden = HttpResponse('{"error": "No such tenant <probe>."}', status=404)
    told = HttpResponse('{"error": "Not yours."}', status=404)
    with pytest.raises(AssertionError, match="told apart"):
        _assert_same(told, hidden, B_SLUG, MISSING_SLUG, "probe")
    same = [HttpResponse(f'{{"error": "No tenant {slug}", "request_id": "{uuid.uuid4()}"}}', status=404)
            for slug in (B_SLUG, MISSING_SLUG)]
    _assert_same(*same, B_SLUG, MISSING_SLUG, "probe")
    with pytest.raises(AssertionError, match="B's"):
        _assert_clean(HttpResponse(f"cost of {B_MODEL}: 1.00"), world, "probe")
