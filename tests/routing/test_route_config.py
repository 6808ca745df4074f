"""Routes in configuration files: `import_config` / `export_config` with a `routes` section."""

from __future__ import annotations

from io import StringIO

import pytest
import yaml
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command

from accounting.auth import api_key_authenticate
from accounting.models import Tenant
from accounting.services import api_key_create, tenant_create
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert
from routing.models import Deployment, RouteGroup, RoutingRule
from routing.selection import RouteHints, route_select

pytestmark = pytest.mark.django_db(transaction=True)  # the config loads run on database threads: committed data

# The documented shape (routing/configuration.py, docs): it must keep importing as it is.
ROUTES = """\
routes:
  - model: smart              # the alias clients send
    strategy: fallback        # fallback | round_robin | weighted | lowest_cost | lowest_latency | least_busy
    match: {task: summarization, tenants: [acme]}   # optional
    deployments:
      - {provider: fake-a, model: gpt-4o-mini, priority: 0, weight: 3}
      - {provider: fake-b, model: gpt-4o-mini, priority: 1, weight: 1}
"""

# Every field a route can carry, in the form export_config writes it back.
FULL_ROUTE = {
    "name": "smart-beta",
    "model": "smart",
    "strategy": "weighted",
    "match": {"task": "chat", "tenants": ["acme"], "tags": ["beta"]},
    "priority": 5,
    "retries": 0,
    "attempt_timeout_seconds": 2.5,
    "total_timeout_seconds": 30.0,
    "breaker": {"failure_threshold": 3, "cooldown_seconds": 15.0},
    "deployments": [
        {"provider": "fake-a", "model": "gpt-4o-mini", "priority": 0, "weight": 3, "key": "default"},
        {"provider": "fake-b", "model": "gpt-4o-mini", "priority": 1, "weight": 1, "enabled": False},
    ],
}


@pytest.fixture
def catalogue():
    """Providers fake-a and fake-b serving gpt-4o-mini (never called here), and tenant acme."""
    for name in ("fake-a", "fake-b"):
        provider = Provider.objects.create(name=name, type="openai", api_base=f"http://{name}.invalid/v1")
        provider_key_upsert(provider=provider, name="default", secret=f"sk-{name}-secret")
        ProviderModel.objects.create(
            provider=provider, alias="gpt-4o-mini", upstream_model="gpt-4o-mini-2024-07-18",
            input_price_per_million="0.15", output_price_per_million="0.60",
        )
    tenant_create(slug="acme", name="Acme")


def import_text(tmp_path, text: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    out = StringIO()
    call_command("import_config", str(path), stdout=out)
    return out.getvalue()


def export() -> dict:
    out = StringIO()
    call_command("export_config", stdout=out)
    return yaml.safe_load(out.getvalue())


def routes_yaml(*routes: dict) -> str:
    return yaml.safe_dump({"routes": list(routes)}, sort_keys=False)


def deployment_rows() -> list[tuple[str, str, int, int]]:
    return [
        (d.group.name, d.provider_model.provider.name, d.priority, d.weight)
        for d in Deployment.objects.select_related("group", "provider_model__provider").order_by("group", "priority")
    ]


def counts() -> tuple[int, int, int]:
    return RouteGroup.objects.count(), RoutingRule.objects.count(), Deployment.objects.count()


def test_import_creates_the_group_the_rule_and_its_deployments(catalogue, tmp_path):
    assert "1 routes" in import_text(tmp_path, ROUTES)
    rule = RoutingRule.objects.get()
    assert (rule.name, rule.model, rule.task, rule.tags, rule.priority, rule.enabled) == (
        "smart-summarization", "smart", "summarization", [], 100, True
    )
    assert [t.slug for t in rule.tenants.all()] == ["acme"]
    assert (rule.group.name, rule.group.strategy, rule.group.retries) == ("smart-summarization", "fallback", 1)
    assert deployment_rows() == [
        ("smart-summarization", "fake-a", 0, 3), ("smart-summarization", "fake-b", 1, 1),
    ]


def test_an_imported_route_is_what_route_select_uses(catalogue, tmp_path):
    import_text(tmp_path, ROUTES)
    _, raw_key = api_key_create(tenant=Tenant.objects.get(slug="acme"))
    auth = async_to_sync(api_key_authenticate)(raw_key=raw_key, client="127.0.0.1")
    plan = async_to_sync(route_select)(
        auth=auth, model="smart", mode="chat", hints=RouteHints(task="summarization")
    )
    assert plan.rule == "smart-summarization" and plan.strategy == "fallback"
    assert [(d.target.provider_name, d.weight) for d in plan.deployments] == [("fake-a", 3), ("fake-b", 1)]


def test_reimport_is_idempotent_and_replaces_deployments(catalogue, tmp_path):
    import_text(tmp_path, ROUTES)
    first_ids = set(Deployment.objects.values_list("pk", flat=True))
    import_text(tmp_path, ROUTES)
    assert counts() == (1, 1, 2)
    assert set(Deployment.objects.values_list("pk", flat=True)).isdisjoint(first_ids)  # replaced
    assert deployment_rows() == [
        ("smart-summarization", "fake-a", 0, 3), ("smart-summarization", "fake-b", 1, 1),
    ]
    # The file is the truth for a route's deployments: one left, with a new weight.
    fewer = ROUTES.replace("      - {provider: fake-b, model: gpt-4o-mini, priority: 1, weight: 1}\n", "")
    import_text(tmp_path, fewer.replace("weight: 3", "weight: 7"))
    assert counts() == (1, 1, 1)
    assert deployment_rows() == [("smart-summarization", "fake-a", 0, 7)]


def test_export_writes_the_documented_route_back(catalogue, tmp_path):
    import_text(tmp_path, ROUTES)
    assert export()["routes"] == [{
        "name": "smart-summarization",
        "model": "smart",
        "strategy": "fallback",
        "match": {"task": "summarization", "tenants": ["acme"]},
        "priority": 100,
        "retries": 1,
        "total_timeout_seconds": 120.0,
        "deployments": [
            {"provider": "fake-a", "model": "gpt-4o-mini", "priority": 0, "weight": 3},
            {"provider": "fake-b", "model": "gpt-4o-mini", "priority": 1, "weight": 1},
        ],
    }]


def test_export_round_trips_every_route_field(catalogue, tmp_path):
    import_text(tmp_path, routes_yaml(FULL_ROUTE))
    exported = export()["routes"]
    assert exported == [FULL_ROUTE]
    # Importing the export into an empty routing table recreates the same routes.
    RoutingRule.objects.all().delete()
    RouteGroup.objects.all().delete()
    import_text(tmp_path, routes_yaml(*exported))
    assert export()["routes"] == [FULL_ROUTE]
    assert counts() == (1, 1, 2)


@pytest.mark.parametrize("priority", [0, -5])
def test_export_round_trips_a_rule_priority_of_zero_or_below(catalogue, tmp_path, priority):
    # Lower is tried first; 0 and negatives are valid rule priorities in the model and the admin.
    import_text(tmp_path, ROUTES)
    RoutingRule.objects.update(priority=priority)
    exported = export()["routes"]
    assert exported[0]["priority"] == priority
    import_text(tmp_path, routes_yaml(*exported))
    assert RoutingRule.objects.get().priority == priority


def test_export_and_reimport_keeps_a_disabled_rule_off(catalogue, tmp_path):
    import_text(tmp_path, ROUTES)
    RoutingRule.objects.update(enabled=False)
    exported = export()["routes"]
    assert exported[0]["enabled"] is False
    import_text(tmp_path, routes_yaml(*exported))
    assert RoutingRule.objects.get().enabled is False


def bad_route(**changes) -> dict:
    route = {
        "model": "smart", "strategy": "fallback", "match": {"tenants": ["acme"]},
        "deployments": [{"provider": "fake-a", "model": "gpt-4o-mini"}],
    }
    route.update(changes)
    return {key: value for key, value in route.items() if value is not None}


@pytest.mark.parametrize(
    "route, message",
    [
        (bad_route(strategy="fastest"), "routes[0].strategy must be one of fallback, round_robin"),
        (bad_route(deployments=[{"provider": "nope", "model": "gpt-4o-mini"}]),
         "routes[0].deployments[0]: provider 'nope' has no model 'gpt-4o-mini'"),
        (bad_route(deployments=[{"provider": "fake-a", "model": "gpt-9"}]),
         "routes[0].deployments[0]: provider 'fake-a' has no model 'gpt-9'"),
        (bad_route(deployments=[{"provider": "fake-a", "model": "gpt-4o-mini", "key": "spare"}]),
         "routes[0].deployments[0]: provider 'fake-a' has no key named 'spare'"),
        (bad_route(match={"tenants": ["acme", "globex"]}), "routes[0].match.tenants: unknown tenant(s) globex"),
        (bad_route(match={"tenant": "acme"}), "routes[0].match: unknown key(s) tenant"),
        (bad_route(color="blue"), "routes[0]: unknown key(s) color"),
        (bad_route(deployments=[{"provider": "fake-a", "model": "gpt-4o-mini", "cost": 1}]),
         "routes[0].deployments[0]: unknown key(s) cost"),
        (bad_route(deployments=[]), "routes[0].deployments must list at least one deployment"),
        (bad_route(deployments=None), "routes[0].deployments must list at least one deployment"),
        (bad_route(model=None), "routes[0].model is required"),
        (bad_route(breaker={"failure_threshold": 100000}), "routes[0].breaker.failure_threshold must be at most 32767"),
        (bad_route(best_rated={"min_share": 1.5}), "routes[0].best_rated.min_share must be a number from 0 to 1"),
        (bad_route(best_rated={"lambda": -1}), "routes[0].best_rated.lambda must be a number of 0 or more"),
        (bad_route(best_rated={"metric": "no spaces"}), "routes[0].best_rated.metric must be a feedback metric"),
        (bad_route(best_rated={"explore": 1}), "routes[0].best_rated: unknown key(s) explore"),
    ],
    ids=[
        "unknown-strategy", "unknown-provider", "unknown-model", "unknown-provider-key",
        "unknown-tenant", "unknown-match-key", "unknown-route-key", "unknown-deployment-key",
        "empty-deployments", "missing-deployments", "missing-model", "breaker-threshold-too-large",
        "best-rated-share", "best-rated-lambda", "best-rated-metric", "best-rated-unknown-key",
    ],
)
def test_a_bad_route_is_a_clear_command_error_and_writes_nothing(catalogue, tmp_path, route, message):
    with pytest.raises(CommandError) as error:
        import_text(tmp_path, routes_yaml(route))
    assert message in str(error.value)
    assert counts() == (0, 0, 0)


def test_a_bad_second_route_rolls_back_the_first(catalogue, tmp_path):
    with pytest.raises(CommandError, match=r"routes\[1\]\.strategy"):
        import_text(tmp_path, routes_yaml(bad_route(), bad_route(model="other", strategy="fastest")))
    assert counts() == (0, 0, 0)


def test_two_routes_with_one_name_are_refused(tmp_path):
    from io import StringIO

    from django.core.management import CommandError, call_command

    from accounting.services import tenant_create
    from providers.models import Provider, ProviderModel

    tenant_create(slug="acme")
    tenant_create(slug="globex")
    provider = Provider.objects.create(name="fake-a", api_base="http://127.0.0.1:1/v1")
    ProviderModel.objects.create(provider=provider, alias="gpt-4o-mini", upstream_model="gpt-4o-mini")
    path = tmp_path / "dup.yaml"
    path.write_text(
        "routes:\n"
        "  - {model: smart, match: {tenants: [acme]}, deployments: [{provider: fake-a, model: gpt-4o-mini}]}\n"
        "  - {model: smart, match: {tenants: [globex]}, deployments: [{provider: fake-a, model: gpt-4o-mini}]}\n"
    )
    with pytest.raises(CommandError, match="second route named 'smart'"):
        call_command("import_config", str(path), stdout=StringIO())


def test_key_scoped_route_round_trips_by_key_prefix(tmp_path):
    from io import StringIO

    import yaml
    from django.core.management import call_command

    from accounting.services import api_key_create, tenant_create
    from providers.models import Provider, ProviderModel
    from routing.models import RoutingRule

    key, _ = api_key_create(tenant=tenant_create(slug="acme"), name="ci")
    provider = Provider.objects.create(name="fake-a", api_base="http://127.0.0.1:1/v1")
    ProviderModel.objects.create(provider=provider, alias="gpt-4o-mini", upstream_model="gpt-4o-mini")
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"routes:\n  - {{model: smart, match: {{keys: [{key.prefix}]}}, "
        "deployments: [{provider: fake-a, model: gpt-4o-mini}]}\n"
    )
    call_command("import_config", str(path), stdout=StringIO())
    assert list(RoutingRule.objects.get().api_keys.all()) == [key]
    out = StringIO()
    call_command("export_config", stdout=out)
    assert yaml.safe_load(out.getvalue())["routes"][0]["match"]["keys"] == [key.prefix]


def test_best_rated_settings_round_trip(catalogue, tmp_path):
    route = {
        "name": "smart", "model": "smart", "strategy": "best_rated", "priority": 100, "retries": 1,
        "total_timeout_seconds": 120.0,
        "best_rated": {"lambda": 250.0, "min_share": 0.1, "min_ratings": 50, "metric": "resolved"},
        "deployments": [{"provider": "fake-a", "model": "gpt-4o-mini", "priority": 0, "weight": 1}],
    }
    import_text(tmp_path, routes_yaml(route))
    group = RouteGroup.objects.get()
    assert (group.strategy, group.best_rated_lambda, group.best_rated_min_share, group.best_rated_min_ratings,
            group.best_rated_metric) == ("best_rated", 250.0, 0.1, 50, "resolved")
    assert export()["routes"] == [route]
    # Left out, the settings are the defaults (and a non-best_rated route exports none).
    import_text(tmp_path, routes_yaml({**route, "strategy": "fallback", "best_rated": None}))
    group.refresh_from_db()
    assert (group.best_rated_lambda, group.best_rated_min_share, group.best_rated_min_ratings) == (0.0, 0.05, 30)
    assert "best_rated" not in export()["routes"][0]
