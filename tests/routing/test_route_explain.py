"""Route explain (command and admin page) and the admin's provider health page.

Nothing is sent to a provider: the explain is a dry run and health is recorded directly.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command

from accounting.models import Tenant
from accounting.services import tenant_create
from providers.models import Provider, ProviderKey, ProviderModel
from providers.services import provider_key_upsert
from routing.breakers import BreakerPolicy, breaker_store
from routing.health import health_store
from routing.models import Deployment, RouteGroup, RoutingRule

pytestmark = pytest.mark.django_db(transaction=True)  # the config loads run on database threads: committed data

POLICY = BreakerPolicy(failure_threshold=2, cooldown_seconds=60.0)


@pytest.fixture
def routes():
    """smart → fake-a then fake-b (fallback), and smart with task summarization → fake-b only.

    Returns the breaker/health key of each provider's deployment: {"fake-a": key, "fake-b": key}.
    """
    keys = {}
    models = {}
    for name in ("fake-a", "fake-b"):
        provider = Provider.objects.create(name=name, type="openai", api_base=f"http://{name}.invalid/v1")
        provider_key_upsert(provider=provider, name="default", secret=f"sk-{name}-secret")
        models[name] = ProviderModel.objects.create(
            provider=provider, alias="gpt-4o-mini", upstream_model=f"{name}-mini",
            input_price_per_million="0.15", output_price_per_million="0.60",
        )
        keys[name] = f"{models[name].pk}:{ProviderKey.objects.get(provider=provider).pk}"
    acme = tenant_create(slug="acme", name="Acme")
    tenant_create(slug="globex", name="Globex")
    group = RouteGroup.objects.create(
        name="smart-group", strategy="fallback", retries=1, total_timeout_seconds=45,
        breaker_failure_threshold=POLICY.failure_threshold, breaker_cooldown_seconds=POLICY.cooldown_seconds,
    )
    Deployment.objects.create(group=group, provider_model=models["fake-a"], priority=0, weight=3)
    Deployment.objects.create(group=group, provider_model=models["fake-b"], priority=1, weight=1)
    rule = RoutingRule.objects.create(name="smart-rule", model="smart", group=group, priority=100)
    rule.tenants.set([acme])
    summaries = RouteGroup.objects.create(name="summaries-group", strategy="least_busy", retries=0)
    Deployment.objects.create(group=summaries, provider_model=models["fake-b"], priority=0, weight=2)
    RoutingRule.objects.create(
        name="smart-summaries", model="smart", group=summaries, task="summarization", priority=10
    )
    return keys


def explain(*args: str) -> list[str]:
    out = StringIO()
    call_command("route_explain", *args, stdout=out)
    return out.getvalue().splitlines()


@async_to_sync
async def open_breaker(key: str) -> None:
    for _ in range(POLICY.failure_threshold):
        await breaker_store().record_failure(key, policy=POLICY)


@async_to_sync
async def record_health(key: str, *samples: tuple[bool, float]) -> None:
    for ok, latency in samples:
        await health_store().record(key, ok=ok, latency_ms=latency, error="" if ok else "upstream_server: 500")


# --- the command ---------------------------------------------------------------------------------
def test_explain_names_the_rule_the_strategy_and_the_deployments_in_order(routes):
    assert explain("--tenant", "acme", "--model", "smart") == [
        "model smart: rule 'smart-rule' → group 'smart-group'",
        "strategy fallback, retries 1, total timeout 45s, breaker opens after 2 failures for 60s",
        "1. fake-a:fake-a-mini priority=0 weight=3 breaker=closed success=- latency=- first-choice=100%",
        "2. fake-b:fake-b-mini priority=1 weight=1 breaker=closed success=- latency=- first-choice=0%",
    ]


def test_explain_with_a_task_picks_the_task_rule(routes):
    lines = explain("--tenant", "acme", "--model", "smart", "--task", "summarization")
    assert lines[0] == "model smart: rule 'smart-summaries' → group 'summaries-group'"
    assert lines[1].startswith("strategy least_busy, retries 0,")
    assert [line.split(" priority")[0] for line in lines[2:]] == ["1. fake-b:fake-b-mini"]


def test_explain_shows_an_open_breaker_as_skipped_and_the_health(routes):
    open_breaker(routes["fake-a"])
    record_health(routes["fake-b"], (True, 120.0))
    lines = explain("--tenant", "acme", "--model", "smart")
    assert lines[2] == (
        "1. fake-a:fake-a-mini priority=0 weight=3 breaker=open success=- latency=- first-choice=100% "
        "(skipped: breaker open)"
    )
    assert lines[3] == (
        "2. fake-b:fake-b-mini priority=1 weight=1 breaker=closed success=100% latency=120ms first-choice=0%"
    )


def test_explain_for_a_real_alias_without_a_rule_names_the_implicit_route(routes):
    lines = explain("--tenant", "acme", "--model", "gpt-4o-mini")
    assert lines[0] == "model gpt-4o-mini: no rule matched → every provider serving the alias"
    assert [line.split(" priority")[0] for line in lines[2:]] == ["1. fake-a:fake-a-mini", "2. fake-b:fake-b-mini"]


def test_explain_of_an_unknown_tenant_is_a_command_error(routes):
    with pytest.raises(CommandError, match="No tenant 'ghost'"):
        explain("--tenant", "ghost", "--model", "smart")


def test_explain_of_an_unknown_model_is_a_command_error(routes):
    with pytest.raises(CommandError, match="The model 'gpt-9' does not exist"):
        explain("--tenant", "acme", "--model", "gpt-9")


def test_explain_of_a_virtual_alias_for_a_tenant_the_rule_does_not_admit_is_a_command_error(routes):
    with pytest.raises(CommandError, match="The model 'smart' does not exist"):
        explain("--tenant", "globex", "--model", "smart")


# --- the admin pages -----------------------------------------------------------------------------
class TableParser(HTMLParser):
    """The rows of the table with a given id, as lists of cell texts."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside, self.rows, self.cell = table_id, False, [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def health_table(page: str) -> list[dict[str, str]]:
    """The provider health table's rows, each as {column header: cell text}."""
    parser = TableParser("provider-health")
    parser.feed(page)
    header, *rows = parser.rows
    return [dict(zip(header, row)) for row in rows]


def test_admin_explain_page_renders_the_commands_lines(routes, admin_client):
    open_breaker(routes["fake-a"])
    acme = Tenant.objects.get(slug="acme")
    response = admin_client.get("/admin/routing/routingrule/explain/", {"tenant": acme.pk, "model": "smart"})
    assert response.status_code == 200
    block = re.search(r'<pre id="route-explanation">(.*?)</pre>', response.content.decode(), re.S)
    assert block is not None
    page_lines = html.unescape(block.group(1)).splitlines()
    assert page_lines == explain("--tenant", "acme", "--model", "smart")
    assert "(skipped: breaker open)" in page_lines[2]


def test_admin_explain_page_without_a_query_shows_only_the_form(routes, admin_client):
    response = admin_client.get("/admin/routing/routingrule/explain/")
    assert response.status_code == 200
    assert 'id="route-explanation"' not in response.content.decode()


def test_admin_provider_health_lists_deployments_with_breaker_and_success_rate(routes, admin_client):
    # Success-rate EWMA (alpha 0.1): 1, 1, then 1 + 0.1 * (0 - 1) = 0.9.
    record_health(routes["fake-a"], (True, 100.0), (True, 100.0), (False, 900.0))
    open_breaker(routes["fake-b"])
    response = admin_client.get("/admin/routing/routegroup/health/")
    assert response.status_code == 200
    rows = {row["Provider"]: row for row in health_table(response.content.decode())}
    assert set(rows) == {"fake-a", "fake-b"}
    fake_a, fake_b = rows["fake-a"], rows["fake-b"]
    assert (fake_a["Model"], fake_a["Upstream"], fake_a["Breaker"]) == ("gpt-4o-mini", "fake-a-mini", "closed")
    assert (fake_a["Requests"], fake_a["Success rate"], fake_a["Latency (ms)"]) == ("3", "90%", "100")
    assert fake_a["Last error"] == "upstream_server: 500"
    assert fake_b["Breaker"].startswith("open") and fake_b["Failures"] == "2"
    assert (fake_b["Requests"], fake_b["Success rate"]) == ("0", "-")


def test_admin_provider_health_lists_a_deployment_on_its_own_provider_key_separately(routes, admin_client):
    # A route sending with a specific provider key has a breaker of its own.
    spare = provider_key_upsert(
        provider=Provider.objects.get(name="fake-a"), name="spare", secret="sk-fake-a-spare"
    )
    model = ProviderModel.objects.get(provider__name="fake-a")
    Deployment.objects.create(
        group=RouteGroup.objects.get(name="summaries-group"), provider_model=model, provider_key=spare
    )
    open_breaker(f"{model.pk}:{spare.pk}")
    response = admin_client.get("/admin/routing/routegroup/health/")
    breakers = sorted(row["Breaker"].split(" ")[0] for row in health_table(response.content.decode())
                      if row["Provider"] == "fake-a")
    assert breakers == ["closed", "open"]
