"""Providers' api_base and budget alert webhooks never point at link-local or cloud metadata
addresses: refused by the admin, the operator API (400 in its error shape) and import_config, and a
webhook again when it is sent; loopback and private ranges stay allowed; one setting allows all."""

from __future__ import annotations

import json
import re

import pytest
from django.core.management import CommandError, call_command

from kernel.upstream_urls import url_destination_problem

METADATA = "http://169.254.169.254/latest/meta-data/"


@pytest.mark.parametrize("url", [
    METADATA,
    "http://[fe80::1]:8080/v1",
    "http://[fe80::1%25eth0]/v1",
    "http://[fd00:ec2::254]/latest",
    "http://[::ffff:169.254.169.254]/",
    "http://2852039166/v1",  # 169.254.169.254 as one number: a spelling the resolver turns into it
    "https://0xa9.0xfe.0xa9.0xfe/",
])
def test_link_local_and_metadata_addresses_are_refused(url):
    problem = url_destination_problem(url)
    assert problem and "link-local or cloud metadata address" in problem and "GATEWAY_ALLOW_PRIVATE_UPSTREAMS" in problem


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:11434/v1", "http://localhost:8000/v1", "http://[::1]:8000", "http://10.1.2.3/v1",
    "http://192.168.1.20:8000/v1", "http://172.16.0.9/v1", "https://api.openai.com/v1", "http://fake-provider:9100/v1",
])
def test_loopback_private_and_public_destinations_stay_allowed(url):
    assert url_destination_problem(url) is None


def test_the_setting_allows_them(settings):
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = True
    assert url_destination_problem(METADATA) is None


@pytest.mark.django_db
def test_the_admin_refuses_a_metadata_api_base(admin_client):
    from providers.models import Provider

    answer = admin_client.post("/admin/providers/provider/add/", {
        "name": "metadata", "type": "openai", "api_base": METADATA, "enabled": "on", "priority": "100",
        "unsupported_params": "[]", "unsupported_param_policy": "drop",
        "models-TOTAL_FORMS": "0", "models-INITIAL_FORMS": "0", "models-MIN_NUM_FORMS": "0", "models-MAX_NUM_FORMS": "1000",
    })
    assert answer.status_code == 200  # the form again, with the error
    assert "169.254.169.254 is a link-local or cloud metadata address" in answer.content.decode()
    assert not Provider.objects.filter(name="metadata").exists()


@pytest.mark.django_db
def test_the_operator_api_refuses_them_with_a_400(operator, gateway):
    provider = operator.call("POST", "/v1/providers", {"name": "metadata", "type": "openai", "api_base": METADATA})
    assert provider.status_code == 400
    error = provider.json()["error"]
    assert error["param"] == "api_base" and "link-local or cloud metadata address" in error["message"]
    moved = operator.call("PATCH", f"/v1/providers/{gateway.provider.pk}", {"api_base": "http://[fd00:ec2::254]/"})
    assert moved.status_code == 400 and moved.json()["error"]["param"] == "api_base"
    budget = operator.call("POST", "/v1/budgets", {"tenant": gateway.tenant.pk, "amount_usd": "10",
                                                   "alert_webhook": "http://169.254.170.2/v2/credentials"})
    assert budget.status_code == 400 and budget.json()["error"]["param"] == "alert_webhook"
    allowed = operator.call("POST", "/v1/budgets", {"tenant": gateway.tenant.pk, "amount_usd": "10",
                                                    "alert_webhook": "http://127.0.0.1:9999/hook"})
    assert allowed.status_code == 201, allowed.content


@pytest.mark.django_db
@pytest.mark.parametrize("config, where", [
    ({"providers": [{"name": "metadata", "type": "openai", "api_base": METADATA}]}, "providers[0].api_base"),
    ({"tenants": [{"slug": "acme", "budget": {"amount_usd": 5, "alert_webhook": "http://[fe80::a9fe:a9fe]/"}}]},
     "tenants[0].budget.alert_webhook"),
])
def test_import_config_refuses_them(tmp_path, config, where):
    from providers.models import Provider

    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    with pytest.raises(CommandError, match=rf"{re.escape(where)}: .* is a link-local or cloud metadata address"):
        call_command("import_config", str(path))
    assert not Provider.objects.filter(name="metadata").exists()


@pytest.mark.django_db
def test_a_webhook_is_checked_again_when_sent(gateway, httpserver_url, settings):
    """Saved while allowed (or while its name resolved elsewhere), refused at send time."""
    from accounting.alerts import budget_alert_send
    from accounting.models import Budget, BudgetAlert

    url, received = httpserver_url
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = True
    budget = Budget.objects.create(tenant=gateway.tenant, amount_usd="10", alert_webhook=METADATA)
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = False
    alert = BudgetAlert.objects.create(budget=budget, period_start=budget.created_at, threshold=50, spent_usd="5")
    assert budget_alert_send(alert_id=alert.pk).webhook_status == "refused: link-local or cloud metadata address"
    Budget.objects.filter(pk=budget.pk).update(alert_webhook=url)
    assert budget_alert_send(alert_id=alert.pk).webhook_status == "sent: HTTP 200"
    assert len(received) == 1


def test_a_wrong_setting_stops_the_start():
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "GATEWAY_ALLOW_PRIVATE_UPSTREAMS": "sometimes"}
    started = subprocess.run([sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE']="
                              "'gateway_site.settings'; django.setup()"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    assert "ImproperlyConfigured: GATEWAY_ALLOW_PRIVATE_UPSTREAMS must be true or false" in started.stderr
