"""The configuration generation against the database: what raises it, in which transaction, and
what another process's caches see of each write path (the admin, the operator API, import_config).

"Another process" is a second `Generation` reading the database's counter, with a clock the test
moves past `GATEWAY_CONFIG_CACHE_SECONDS` (the bound: at most one interval after the commit); it
learns nothing from this process's saves, only from the counter. Its caches load with the same
functions as the hot path's."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.apps import apps
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounting.auth import _load as api_key_load
from accounting.budgets import _budgets_load
from accounting.members import _session_load
from accounting.models import Budget, RateLimit, Tenant, TenantMembership
from accounting.quotas import _rules_load
from caching.models import CachePolicy
from caching.selectors import cache_policies_build
from kernel.credentials import api_key_hash
from kernel.config_cache import ConfigCache
from kernel.config_generation import CONFIGURATION_MODELS, Generation, counter_read, generation
from kernel.models import ConfigGeneration
from guardrails.models import GuardrailPolicy, GuardrailRule
from guardrails.selectors import guardrail_table_build
from providers.models import ProviderModel
from routing.models import Deployment, Experiment, ExperimentVariant, RouteGroup, RoutingRule
from routing.selectors import routing_table_build
from tests.conftest import role_join

INTERVAL = 30.0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Elsewhere:
    """Another process: its own generation (the database's counter, its own clock) and caches."""

    def __init__(self):
        self.clock = Clock()
        self.generation = Generation(clock=self.clock)

    def cache(self, load):
        cache = ConfigCache("elsewhere", generations=self.generation)
        return lambda: async_to_sync(cache.get)("k", load)

    def interval_passes(self):
        self.clock.now += INTERVAL


@pytest.fixture
def elsewhere(settings) -> Elsewhere:
    settings.GATEWAY_CONFIG_CACHE_SECONDS = INTERVAL
    return Elsewhere()


@pytest.fixture
def world(gateway, django_user_model):
    """One row of every configuration model a cache reads, so that each load runs all its queries."""
    user = django_user_model.objects.create_user("mia", password="pw-mia-12345")
    TenantMembership.objects.create(user=user, tenant=gateway.tenant)
    client = Client()
    client.force_login(user)
    group = RouteGroup.objects.create(name="g")
    Deployment.objects.create(group=group, provider_model=ProviderModel.objects.get(alias="gpt-4o-mini"))
    rule = RoutingRule.objects.create(name="r", model="smart", group=group)
    rule.tenants.add(gateway.tenant)
    rule.api_keys.add(gateway.key)
    experiment = Experiment.objects.create(name="e", rule=rule)
    ExperimentVariant.objects.create(experiment=experiment, name="a", group=group)
    policy = GuardrailPolicy.objects.create(tenant=gateway.tenant)
    GuardrailRule.objects.create(policy=policy, kind="blocked_pattern", pattern="falcon")
    CachePolicy.objects.create(name="p", tenant=gateway.tenant, rule=rule)
    Budget.objects.create(tenant=gateway.tenant, amount_usd="5", period="monthly")
    RateLimit.objects.create(tenant=gateway.tenant, rpm=10)
    return gateway, user, client.cookies["sessionid"].value, rule


def test_every_model_a_config_cache_loads_from_raises_the_generation(world):
    gateway, user, session_key, _ = world
    tenant, key = gateway.tenant.pk, gateway.key.pk
    loads = {
        "API keys": lambda: api_key_load(api_key_hash(gateway.raw_key)),
        "member sessions": lambda: _session_load(session_key, user.pk),
        "routing table": routing_table_build,
        "guardrail rules": guardrail_table_build,
        "cache policies": cache_policies_build,
        "budgets": lambda: _budgets_load(tenant, key),
        "rate limits": lambda: _rules_load(tenant, key),
    }
    caches = {cache.name for cache in ConfigCache.instances if cache.generations is generation}
    assert caches == set(loads), "a new ConfigCache: add its load here"
    tables = {model._meta.db_table: model for model in apps.get_models(include_auto_created=True)}
    covered = {apps.get_model(label) for label in CONFIGURATION_MODELS}
    covered |= {field.remote_field.through for model in list(covered) for field in model._meta.many_to_many}
    for name, load in loads.items():
        with CaptureQueriesContext(connection) as queries:
            assert load() is not None
        read = {tables[table] for query in queries for table in re.findall(r'"(\w+)"', query["sql"]) if table in tables}
        assert read, name
        assert read <= covered, f"{name} loads from {read - covered}: add them to CONFIGURATION_MODELS"


@pytest.mark.django_db(transaction=True)
def test_the_counter_moves_with_the_change_in_its_transaction():
    before = ConfigGeneration.objects.get_or_create(pk=ConfigGeneration.ROW)[0].value  # a flush empties it
    with pytest.raises(RuntimeError), transaction.atomic():
        Tenant.objects.create(slug="gone")
        assert counter_read() == before + 1  # raised in the change's own transaction
        raise RuntimeError("rolled back")
    assert counter_read() == before  # rolled back with it
    seen = generation.seen()
    with transaction.atomic():
        Tenant.objects.create(slug="kept")
        during = generation.seen()
    assert counter_read() == before + 1
    assert seen < during < generation.seen()  # at the save, and again once it committed


def test_logins_and_anonymous_sessions_leave_it_alone(db, django_user_model):
    user = django_user_model.objects.create_user("ann", password="pw-ann-12345")
    client = Client()
    anonymous = client.session  # a visitor's session, with data but nobody logged in
    anonymous["seen"] = True
    anonymous.save()
    before = counter_read()
    response = client.post("/accounts/login/", {"username": "ann", "password": "pw-ann-12345"})
    assert response.status_code == 302
    assert not Session.objects.filter(session_key=anonymous.session_key).exists()  # the login replaced it
    user.refresh_from_db()
    user.save(update_fields=["last_login"])
    assert counter_read() == before  # last_login saved, the visitor's session deleted: nothing to see
    Session.objects.get(session_key=client.cookies["sessionid"].value).delete()  # a logged-in one ends
    assert counter_read() == before + 1


# --- each write path, seen by another process ------------------------------------------------------
def test_an_admin_save_reaches_the_guardrail_rules_of_another_process(gateway, elsewhere, django_user_model):
    guardrails = elsewhere.cache(guardrail_table_build)
    assert guardrails().for_tenant(gateway.tenant.pk).input == ()
    admin = django_user_model.objects.create_user("op", password="pw", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    response = client.post("/admin/guardrails/guardrailpolicy/add/", {
        "tenant": gateway.tenant.pk, "name": "strict", "enabled": "on", "inherit_default": "on",
        "rules-TOTAL_FORMS": "1", "rules-INITIAL_FORMS": "0", "rules-MIN_NUM_FORMS": "0", "rules-MAX_NUM_FORMS": "9",
        "rules-0-kind": "blocked_pattern", "rules-0-direction": "input", "rules-0-action": "block",
        "rules-0-pattern": "falcon", "rules-0-enabled": "on",
    })
    assert response.status_code == 302
    assert guardrails().for_tenant(gateway.tenant.pk).input == ()  # not read before the interval
    elsewhere.interval_passes()
    [rule] = guardrails().for_tenant(gateway.tenant.pk).input
    assert rule.regex.pattern == "falcon"


@pytest.fixture
def operator_token(db, django_user_model) -> dict:
    from operators.services import staff_token_create

    user = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    role_join(user, "Gateway operators")
    _, raw = staff_token_create(user=user, name="ci")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_the_operator_api_reaches_the_keys_and_cache_policies_of_another_process(world, elsewhere, operator_token):
    gateway, _, _, rule = world
    keys = elsewhere.cache(lambda: api_key_load(api_key_hash(gateway.raw_key)))
    policies = elsewhere.cache(cache_policies_build)
    assert keys().tenant_active and (gateway.tenant.pk, "r") in policies()
    client = Client()
    response = client.patch(f"/v1/tenants/{gateway.tenant.pk}", data={"is_active": False},
                            content_type="application/json", **operator_token)
    assert response.status_code == 200, response.content
    # Deleting the rule deletes its cache policy with it (a cascade): the cache the operator API's
    # own clears never knew about.
    assert client.delete(f"/v1/routing-rules/{rule.pk}", **operator_token).status_code == 204
    elsewhere.interval_passes()
    assert not keys().tenant_active
    assert (gateway.tenant.pk, "r") not in policies()


def test_import_config_reaches_the_routing_table_of_another_process(gateway, elsewhere, tmp_path):
    table = elsewhere.cache(routing_table_build)
    assert "imported-model" not in {deployment.alias for deployment in table().catalog.models()}
    (tmp_path / "gateway.yaml").write_text(
        "providers:\n"
        "  - name: imported\n    type: openai\n    api_base: http://127.0.0.1:9/v1\n    api_key: sk-imported-0001\n"
        "    models:\n      - alias: imported-model\n        upstream: gpt-4o-mini\n"
    )
    call_command("import_config", str(tmp_path / "gateway.yaml"))
    elsewhere.interval_passes()
    assert "imported-model" in {deployment.alias for deployment in table().catalog.models()}


def test_a_member_removed_is_refused_by_another_process_within_the_interval(world, elsewhere):
    _, user, session_key, _ = world
    sessions = elsewhere.cache(lambda: _session_load(session_key, user.pk))
    assert sessions() is not None
    TenantMembership.objects.filter(user=user).delete()  # a QuerySet delete sends the signal per row
    elsewhere.interval_passes()
    assert sessions() is None



def test_refusals_remembered_under_old_limits_are_forgotten_when_the_configuration_changes():
    from accounting.quotas import RateLimitRule, _refusals_note, rate_limit_refusing

    rules = (RateLimitRule(scope="key:987654", rpm=1, tpm=None, queue_seconds=0.0),)
    _refusals_note(rules)
    assert rate_limit_refusing(rules)  # refused at once while the limits stay the same
    generation.changed()  # the limit was raised (or any configuration changed)
    assert not rate_limit_refusing(rules)
