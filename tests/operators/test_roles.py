"""Operator roles on the operator API: every route and method, as each kind of staff user.

The routes come from the operator router itself (and every operator viewset the URLconf routes
must be in it), so a new route or custom action is swept without being listed here; a custom
action missing from VERBS fails until someone decides which permission it needs.
"""

from __future__ import annotations

import json
import re
from importlib import import_module
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounting.models import Budget
from audit.models import AuditEntry
from operators import urls as operator_urls
from operators.api import OperatorViewSet
from operators.permissions import OperatorPermission
from operators.services import staff_token_create
from routing.models import Deployment, RouteGroup, RoutingRule
from tests.conftest import role_join

pytestmark = pytest.mark.django_db

VIEWERS, OPERATORS = "Gateway viewers", "Gateway operators"
# The Django permission verb each action needs: reads need `view`, not just staff status.
VERBS = {
    "list": "view", "retrieve": "view", "create": "add", "update": "change", "partial_update": "change",
    "destroy": "delete", "health": "view", "revoke": "change", "rotate": "change",
}
CRUD_WITH_BODY = ("create", "partial_update")  # an empty body: a validation error, or a change of nothing
GATEWAY_APPS = ("providers", "accounting", "routing", "caching", "guardrails", "feedback", "audit", "batches")
ROLES = ("staff, no permission", "staff session, no permission", "viewer", "operator, not staff", "operator",
         "superuser")


def operator_calls() -> list:
    """(route pattern, method, action) of every route of the operator router."""
    return [
        pytest.param(pattern, method.upper(), action, id=f"{pattern.name}-{method}")
        for pattern in operator_urls.urlpatterns
        for method, action in sorted(pattern.callback.actions.items())
        if method != "head"  # DRF adds HEAD to GET routes; the viewsets refuse it (405)
    ]


CALLS = operator_calls()


def _routed_operator_views(resolver: URLResolver) -> set[str]:
    names = set()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            names |= _routed_operator_views(entry)
        elif isinstance(entry, URLPattern) and issubclass(getattr(entry.callback, "cls", object), OperatorViewSet):
            names.add(entry.name)
    return names


def test_the_sweep_covers_every_operator_view_and_each_checks_model_permissions():
    assert _routed_operator_views(get_resolver()) == {pattern.name for pattern in operator_urls.urlpatterns}
    assert len(CALLS) == 51  # 8 viewsets x (list: GET, POST; detail: GET, PUT, PATCH, DELETE) + 3 actions
    for pattern in operator_urls.urlpatterns:  # an action's own permission_classes would replace the check
        view = pattern.callback.cls(**pattern.callback.initkwargs)
        assert [type(permission) for permission in view.get_permissions()] == [OperatorPermission], pattern.name


@pytest.fixture
def world(gateway):
    """One object behind every detail route (the gateway fixture has providers, models, keys, a tenant
    and its key)."""
    group = RouteGroup.objects.create(name="sweep-group")
    Deployment.objects.create(group=group, provider_model=gateway.provider.models.get(alias="gpt-4o"))
    RoutingRule.objects.create(name="sweep-rule", model="sweep", group=group)
    Budget.objects.create(tenant=gateway.tenant, amount_usd=10, period="monthly")
    return gateway


def _user(name: str, *, group: str | None = None, superuser: bool = False) -> User:
    user = User.objects.create_user(name, is_staff=True, is_superuser=superuser)  # no password: no slow hashing
    if group:
        role_join(user, group)
    return user


@pytest.fixture
def callers(world) -> dict[str, dict]:
    """Per role: the test client and the headers it sends."""
    def token(user: User) -> dict:
        return {"Authorization": f"Bearer {staff_token_create(user=user, name='sweep')[1]}"}

    session = Client()
    session.force_login(_user("nobody-session"))
    demoted = _user("demoted", group=OPERATORS)
    demoted_headers = token(demoted)
    User.objects.filter(pk=demoted.pk).update(is_staff=False)  # staff status lost after the token was made
    return {
        "staff, no permission": {"client": Client(), "headers": token(_user("nobody"))},
        "staff session, no permission": {"client": session, "headers": {}},
        "viewer": {"client": Client(), "headers": token(_user("viewer", group=VIEWERS))},
        "operator, not staff": {"client": Client(), "headers": demoted_headers},
        "operator": {"client": Client(), "headers": token(_user("operator", group=OPERATORS))},
        "superuser": {"client": Client(), "headers": token(_user("root", superuser=True))},
    }


def _needed(pattern: URLPattern, action: str) -> str:
    meta = pattern.callback.cls.queryset.model._meta
    return f"{meta.app_label}.{VERBS[action]}_{meta.model_name}"


def _path(pattern: URLPattern) -> str:
    if "pk" not in pattern.pattern.regex.groupindex:
        return reverse(pattern.name)
    model = pattern.callback.cls.queryset.model
    return reverse(pattern.name, kwargs={"pk": model.objects.order_by("pk").first().pk})


def _call(caller: dict, method: str, path: str, body) -> tuple[int, dict, int]:
    """The answer's status and JSON, and how many audit entries the call wrote; the call's changes
    are rolled back, so every role meets the same objects."""
    with transaction.atomic():
        before = AuditEntry.objects.count()
        response = caller["client"].generic(
            method, path, json.dumps(body) if body is not None else "", content_type="application/json",
            headers=caller["headers"],
        )
        written = AuditEntry.objects.count() - before
        transaction.set_rollback(True)
    return response.status_code, response.json() if response.content else {}, written


@pytest.mark.parametrize(("pattern", "method", "action"), CALLS)
def test_every_operator_route_needs_its_model_permission(pattern, method, action, callers):
    verb = VERBS[action]  # a KeyError: a new custom action, add the permission it needs here
    needed = _needed(pattern, action)
    path = _path(pattern)
    body = None
    if method == "PUT":  # the object as it is: a full update that validates
        body = Client().get(path, headers=callers["superuser"]["headers"]).json()
    elif method in ("POST", "PATCH") and action in CRUD_WITH_BODY:
        body = {}
    answers = {role: _call(callers[role], method, path, body) for role in ROLES}

    for role in ("staff, no permission", "staff session, no permission") + (() if verb == "view" else ("viewer",)):
        status, error, written = answers[role]
        assert (status, written) == (403, 0), (role, status, error)
        assert error["error"]["code"] == "permission_denied"
        assert error["error"]["message"] == f"This action needs the permission '{needed}'.", error
    status, error, written = answers["operator, not staff"]
    assert (status, written, error["error"]["code"]) == (403, 0, "permission_denied"), error
    if verb == "view":
        assert answers["viewer"][0] == 200, answers["viewer"]
    # An empty body to create is a validation error; deleting an object others use, a conflict.
    expected = {"add": {201, 400}, "delete": {204, 409}}.get(verb, {200})
    for role in ("operator", "superuser"):
        status, answer, written = answers[role]
        assert status in expected, (role, status, answer)
        assert written == (verb != "view" and status < 300), (role, written)  # each write audited, once


def test_viewers_see_every_gateway_model_and_operators_change_its_configuration(db):
    role_join(_user("someone"), VIEWERS)  # the groups, even after a transactional test's flush
    viewers = set(Group.objects.get(name=VIEWERS).permissions.values_list("content_type__app_label", "codename"))
    operators = set(Group.objects.get(name=OPERATORS).permissions.values_list("content_type__app_label", "codename"))
    models = [model._meta for label in GATEWAY_APPS for model in apps.get_app_config(label).get_models()]
    assert viewers == {(meta.app_label, f"view_{meta.model_name}") for meta in models}
    assert viewers < operators
    assert all(codename.split("_")[0] in ("view", "add", "change", "delete") for _, codename in operators)
    # The audit log stays read-only; staff tokens and users stay with superusers.
    assert {(app, name) for app, name in operators if app in ("audit", "operators", "auth")} == {
        ("audit", "view_auditentry")}
    for pattern in operator_urls.urlpatterns:  # every model of the operator API is the operators' to change
        meta = pattern.callback.cls.queryset.model._meta
        assert {(meta.app_label, f"{verb}_{meta.model_name}") for verb in ("add", "change", "delete")} <= operators


def test_the_docs_name_the_permission_of_every_route():
    documented = set()
    text = (Path(__file__).resolve().parents[2] / "docs" / "operator-api.md").read_text()
    for route, methods, permission in re.findall(r"^\| `(/v1/[^`]+)` \| ([A-Z, ]+) \| `([\w.]+)` \|$", text, re.M):
        documented |= {(route, method, permission) for method in methods.split(", ")}
    routes = {
        ("/v1/" + re.sub(r"\(\?P<pk>[^)]*\)", "{id}", pattern.pattern.regex.pattern.strip("^$")), method,
         _needed(pattern, action))
        for pattern, method, action in (call.values for call in CALLS)
    }
    assert documented == routes


def _roles() -> dict[str, set[int]]:
    return {group.name: set(group.permissions.values_list("pk", flat=True)) for group in Group.objects.all()}


def test_roles_migration_is_idempotent_and_reversible(db):
    migration = import_module("operators.migrations.0002_operator_roles")
    later = [import_module("operators.migrations.0003_stored_responses_viewed"),  # later models' views
             import_module("operators.migrations.0004_batches_viewed"),
             import_module("operators.migrations.0005_usage_record_changes_viewed"),
             import_module("operators.migrations.0006_route_posteriors_viewed")]
    with connection.schema_editor() as editor:
        migration.roles_create(apps, editor)
        for extension in later:
            extension.roles_extend(apps, editor)
    created = _roles()
    assert set(created) == {VIEWERS, OPERATORS}
    extra = Permission.objects.get(codename="view_stafftoken")
    Group.objects.get(name=VIEWERS).permissions.add(extra)
    with connection.schema_editor() as editor:
        migration.roles_create(apps, editor)
        for extension in later:
            extension.roles_extend(apps, editor)
    assert _roles() == created  # run again: the same groups, reset to their lists

    call_command("migrate", "operators", "0001", verbosity=0)
    assert not Group.objects.filter(name__in=[VIEWERS, OPERATORS]).exists()
    call_command("migrate", "operators", verbosity=0)
    assert _roles() == created
