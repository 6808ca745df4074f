"""/ready in process: per-dependency JSON, 503 naming what failed, provider summary for operators.
(tests/e2e/test_observability.py stops and restarts a real Redis under a running gateway.)"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from routing.breakers import BreakerPolicy, breaker_store
from routing.explain import provider_health_rows
from tests.conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)


async def test_ready_reports_every_dependency(gateway):
    response = await AsyncClient().get("/ready")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "migrations", "redis", "celery_broker"}
    assert all(check["status"] == "ok" for check in body["checks"].values())
    assert body["checks"]["database"]["vendor"] == "postgresql"


async def test_ready_fails_naming_redis_when_it_does_not_answer(gateway, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.GATEWAY_READY_TIMEOUT = 1.0
    response = await AsyncClient().get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["status"] == "error"
    assert body["checks"]["redis"]["error"]  # the error's class, e.g. ConnectionError
    assert body["checks"]["database"]["status"] == "ok"


async def test_operators_get_a_provider_summary(gateway):
    text = json.dumps((await AsyncClient().get("/ready")).json())
    assert '"provider": "fake"' in text
    rows = await sync_to_async(provider_health_rows)()
    key = next(row["key"] for row in rows if row["deployment"].target.provider_name == "fake-anthropic")
    policy = BreakerPolicy.default()
    for _ in range(policy.failure_threshold):
        await breaker_store().record_failure(key, policy=policy)
    providers = {p["provider"]: p for p in (await AsyncClient().get("/ready")).json()["providers"]}
    assert providers["fake-anthropic"]["status"] == "down"
    assert providers["fake-anthropic"]["breakers"] == {"open": 1}
    assert providers["fake"]["status"] == "ok"
    assert providers["fake"]["deployments"] == 3


async def test_the_provider_summary_is_not_for_everyone(gateway):
    response = await AsyncClient().get("/ready", headers={"X-Forwarded-For": "198.51.100.7"})
    assert response.status_code == 200
    assert "providers" not in response.json()
