"""The operator REST API through Django's test client: staff tokens, CRUD, errors, caches, health."""

from __future__ import annotations

import pytest

from accounting.models import Budget, TenantApiKey, UsageRecord
from audit.models import AuditEntry
from providers.models import ProviderKey

pytestmark = pytest.mark.django_db(transaction=True)


def assert_error(response, status: int, *, param=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def test_operator_routes_need_a_staff_token(operator, gateway):
    assert_error(operator.call("GET", "/v1/providers", token=""), 401)
    error = assert_error(operator.call("GET", "/v1/providers", token="sk-op-not-a-token"), 401)
    assert error["code"] == "invalid_api_key"
    # A tenant API key is not a staff token...
    assert_error(operator.call("GET", "/v1/tenants", token=gateway.raw_key), 401)
    # ...and a staff token is not a tenant key.
    assert_error(operator.call("GET", "/v1/models"), 401)
    assert operator.call("GET", "/v1/models", token=gateway.raw_key).status_code == 200
    # A token whose user lost staff status is refused.
    operator.user.is_staff = False
    operator.user.save()
    assert_error(operator.call("GET", "/v1/providers"), 403)


def test_staff_token_command_prints_the_token_once(db, capsys):
    from django.contrib.auth.models import User
    from django.core.management import CommandError, call_command

    User.objects.create_user("admin2", is_staff=True)
    call_command("create_staff_token", "admin2", "--name", "script")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert raw.startswith("sk-op-")
    from operators.models import StaffToken

    token = StaffToken.objects.get(name="script")
    assert raw not in (token.hashed_key, token.prefix) and raw.startswith(token.prefix)
    entry = AuditEntry.objects.get(object_type="operators.stafftoken")
    assert (entry.action, entry.via) == ("created", "command")
    assert raw not in repr(vars(entry)) and token.hashed_key not in repr(vars(entry))
    User.objects.create_user("nobody")
    with pytest.raises(CommandError):
        call_command("create_staff_token", "nobody")


def test_provider_crud_and_validation_errors_name_the_field(operator):
    created = operator.call("POST", "/v1/providers", {"name": "mistral", "type": "openai",
                                                     "api_base": "https://api.mistral.ai/v1"})
    assert created.status_code == 201, created.content
    provider = created.json()
    assert provider["priority"] == 100 and provider["unsupported_params"] == []
    assert_error(operator.call("POST", "/v1/providers", {"name": "x", "type": "nope", "api_base": "https://a"}),
                 400, param="type")
    assert_error(operator.call("POST", "/v1/providers", {"name": "y", "api_base": "not a url"}), 400, param="api_base")
    assert_error(operator.call("POST", "/v1/providers", {"name": "mistral", "api_base": "https://b"}), 400, param="name")
    assert_error(operator.call("POST", "/v1/providers", "[1, 2"), 400)
    bad_json = operator.client.post("/v1/providers", data="{", content_type="application/json",
                                    HTTP_AUTHORIZATION=f"Bearer {operator.token}")
    assert_error(bad_json, 400)
    patched = operator.call("PATCH", f"/v1/providers/{provider['id']}", {"priority": 5, "timeout_seconds": 30})
    assert patched.json()["priority"] == 5 and patched.json()["timeout_seconds"] == 30
    assert_error(operator.call("PATCH", f"/v1/providers/{provider['id']}", {"timeout_seconds": -1}), 400,
                 param="timeout_seconds")
    listed = operator.call("GET", "/v1/providers").json()
    assert [p["name"] for p in listed["results"]] == ["mistral"]
    far = operator.call("GET", "/v1/providers?limit=99999999999999999999&offset=99999999999999999999")
    assert far.status_code == 200 and far.json()["results"] == []
    assert_error(operator.call("POST", "/v1/providers", {"name": "big", "api_base": "https://x.example",
                                                        "priority": 2**70}), 400, param="priority")
    assert operator.call("DELETE", f"/v1/providers/{provider['id']}").status_code == 204
    assert_error(operator.call("GET", f"/v1/providers/{provider['id']}"), 404)
    assert_error(operator.call("GET", "/v1/providers/abc"), 404)
    assert_error(operator.call("GET", "/v1/providers/99999999999999999999999"), 404)
    actions = list(AuditEntry.objects.order_by("pk").values_list("action", "object_type", "via"))
    assert actions == [("created", "providers.provider", "api"), ("changed", "providers.provider", "api"),
                       ("deleted", "providers.provider", "api")]
    assert AuditEntry.objects.first().actor.startswith("ops (token sk-op-")


def test_provider_key_secret_is_write_only_and_rotation_is_audited(operator, gateway):
    secret, new_secret = "sk-live-provider-SECRET-111", "sk-live-provider-SECRET-222"
    provider = gateway.provider.pk
    assert_error(operator.call("POST", "/v1/provider-keys", {"provider": provider, "name": "second"}), 400,
                 param="secret")
    created = operator.call("POST", "/v1/provider-keys", {"provider": provider, "name": "second", "secret": secret})
    assert created.status_code == 201
    body = created.json()
    assert "secret" not in body and secret not in created.content.decode()
    key = ProviderKey.objects.get(pk=body["id"])
    assert key.get_secret() == secret and secret not in key.encrypted_secret
    renamed = operator.call("PATCH", f"/v1/provider-keys/{key.pk}", {"enabled": False})
    assert renamed.status_code == 200 and ProviderKey.objects.get(pk=key.pk).get_secret() == secret
    rotated = operator.call("PATCH", f"/v1/provider-keys/{key.pk}", {"secret": new_secret})
    assert rotated.status_code == 200 and new_secret not in rotated.content.decode()
    assert ProviderKey.objects.get(pk=key.pk).get_secret() == new_secret
    listed = operator.call("GET", "/v1/provider-keys").content.decode()
    assert "sk-fake-provider-secret" not in listed and "SECRET" not in listed
    entries = AuditEntry.objects.filter(object_type="providers.providerkey").order_by("pk")
    assert [(e.action, e.changed_fields) for e in entries] == [
        ("created", ["name", "provider", "secret"]), ("changed", ["enabled"]), ("rotated", ["secret"]),
    ]


def test_tenant_keys_shown_once_revoked_and_rotated_at_once(operator, gateway):
    tenant = operator.call("POST", "/v1/tenants", {"slug": "globex", "name": "Globex"}).json()
    created = operator.call("POST", "/v1/tenant-keys", {"tenant": tenant["id"], "name": "ci",
                                                        "allowed_models": ["gpt-4o-mini"]})
    assert created.status_code == 201, created.content
    body = created.json()
    raw = body["key"]
    assert raw.startswith(body["prefix"]) and raw.startswith("sk-gw-")
    models = operator.call("GET", "/v1/models", token=raw)
    assert [m["id"] for m in models.json()["data"]] == ["gpt-4o-mini"]
    shown = operator.call("GET", f"/v1/tenant-keys/{body['id']}").json()
    assert "key" not in shown and shown["prefix"] == body["prefix"]
    assert_error(operator.call("PATCH", f"/v1/tenant-keys/{body['id']}", {"tenant": gateway.tenant.pk}), 400,
                 param="tenant")

    rotated = operator.call("POST", f"/v1/tenant-keys/{body['id']}/rotate").json()
    assert rotated["id"] == body["id"] and rotated["key"] != raw
    assert_error(operator.call("GET", "/v1/models", token=raw), 401)  # the cache was cleared at once
    assert operator.call("GET", "/v1/models", token=rotated["key"]).status_code == 200

    revoked = operator.call("POST", f"/v1/tenant-keys/{body['id']}/revoke").json()
    assert revoked["revoked"] is True and "key" not in revoked
    assert_error(operator.call("GET", "/v1/models", token=rotated["key"]), 401)

    key = TenantApiKey.objects.get(pk=body["id"])
    rows = list(AuditEntry.objects.filter(object_type="accounting.tenantapikey").values())
    assert [row["action"] for row in rows] == ["revoked", "rotated", "created"]
    for row in rows:  # neither plaintext nor hash, old or new, ever lands in the audit log
        text = repr(row)
        assert raw not in text and rotated["key"] not in text and key.hashed_key not in text


def test_budgets_validate_their_scope(operator, gateway):
    other = operator.call("POST", "/v1/tenants", {"slug": "initech"}).json()
    body = {"tenant": other["id"], "api_key": gateway.key.pk, "amount_usd": "10", "period": "monthly"}
    assert_error(operator.call("POST", "/v1/budgets", body), 400, param="api_key")
    body = {"tenant": gateway.tenant.pk, "amount_usd": "25.5", "period": "daily", "alert_thresholds": [50, 100]}
    created = operator.call("POST", "/v1/budgets", body)
    assert created.status_code == 201, created.content
    assert Budget.objects.get().amount_usd == 25.5
    assert_error(operator.call("POST", "/v1/budgets", body), 400, param="period")
    assert_error(operator.call("POST", "/v1/budgets", {**body, "period": "weekly", "amount_usd": "-1"}), 400,
                 param="amount_usd")
    assert_error(operator.call("POST", "/v1/budgets", {**body, "period": "weekly", "alert_thresholds": [0]}), 400,
                 param="alert_thresholds.0")
    assert AuditEntry.objects.filter(object_type="accounting.budget", action="created").count() == 1


def test_routing_through_the_api_takes_effect_at_once(operator, gateway):
    model_id = gateway.provider.models.get(alias="gpt-4o").pk
    group = operator.call("POST", "/v1/route-groups", {
        "name": "smart-group", "strategy": "fallback",
        "deployments": [{"provider_model": model_id, "priority": 0}],
    })
    assert group.status_code == 201, group.content
    group = group.json()
    assert [d["provider_model"] for d in group["deployments"]] == [model_id]
    rule = operator.call("POST", "/v1/routing-rules", {"name": "smart", "model": "smart", "group": group["id"],
                                                      "tenants": [gateway.tenant.pk]})
    assert rule.status_code == 201, rule.content
    chat = operator.client.post(
        "/v1/chat/completions", data={"model": "smart", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {gateway.raw_key}",
    )
    assert chat.status_code == 200, chat.content
    assert UsageRecord.objects.get().route == "smart"
    # The group is still used by the rule: deleting it is a conflict, not a 500.
    assert_error(operator.call("DELETE", f"/v1/route-groups/{group['id']}"), 409)
    assert_error(operator.call("DELETE", f"/v1/tenants/{gateway.tenant.pk}"), 409)  # it has usage records
    other_key = gateway.anthropic_provider.keys.get().pk
    assert_error(operator.call("PATCH", f"/v1/route-groups/{group['id']}", {
        "deployments": [{"provider_model": model_id, "provider_key": other_key}]}), 400,
        param="deployments.0.provider_key")
    assert operator.call("PATCH", f"/v1/routing-rules/{rule.json()['id']}", {"enabled": False}).status_code == 200
    chat = operator.client.post(
        "/v1/chat/completions", data={"model": "smart", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {gateway.raw_key}",
    )
    assert chat.status_code == 404, chat.content  # no rule now, and no provider serves "smart"
    rule_audit = AuditEntry.objects.filter(object_type="routing.routingrule").order_by("pk")
    assert [(e.action, e.changed_fields) for e in rule_audit] == [
        ("created", ["group", "model", "name", "tenants"]), ("changed", ["enabled"])]
    # The failed writes (409, 400) left no audit rows: each entry shares its change's transaction.
    assert list(AuditEntry.objects.filter(object_type="routing.routegroup").values_list("action", flat=True)) == [
        "created"]


def test_provider_health(operator, gateway):
    health = operator.call("GET", f"/v1/providers/{gateway.provider.pk}/health")
    assert health.status_code == 200, health.content
    body = health.json()
    assert body["name"] == "fake" and body["status"] == "healthy"
    assert {d["alias"] for d in body["deployments"]} == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}
    assert all(d["breaker"]["state"] == "closed" for d in body["deployments"])
    assert "sk-fake-provider-secret" not in health.content.decode()
    assert_error(operator.call("GET", "/v1/providers/424242/health"), 404)


def test_best_rated_settings_through_the_api(operator, gateway):
    model_id = gateway.provider.models.get(alias="gpt-4o").pk
    group = operator.call("POST", "/v1/route-groups", {
        "name": "rated", "strategy": "best_rated", "best_rated_lambda": 100, "best_rated_min_share": 0.1,
        "deployments": [{"provider_model": model_id, "priority": 0}],
    })
    assert group.status_code == 201, group.content
    body = group.json()
    assert (body["strategy"], body["best_rated_lambda"], body["best_rated_min_share"], body["best_rated_min_ratings"],
            body["best_rated_metric"]) == ("best_rated", 100.0, 0.1, 30, "")
    assert_error(operator.call("PATCH", f"/v1/route-groups/{body['id']}", {"best_rated_min_share": 2}), 400,
                 param="best_rated_min_share")
    assert_error(operator.call("PATCH", f"/v1/route-groups/{body['id']}", {"best_rated_lambda": -1}), 400,
                 param="best_rated_lambda")
