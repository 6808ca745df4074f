"""GET /v1/usage through the production ASGI app: grouping, date ranges, tenant isolation, errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from tests.asgi_client import ApiClient
from django.utils import timezone

from accounting.models import UsageRecord
from accounting.rollups import rollup_bucket
from accounting.services import api_key_create, tenant_create

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt_timezone.utc
MAR1 = datetime(2026, 3, 1, tzinfo=UTC)
MAR2, MAR3 = MAR1 + timedelta(days=1), MAR1 + timedelta(days=2)


@dataclass
class Usage:
    acme_raw: str
    globex_raw: str
    ci: object
    web: object


def record(tenant, key, when, model, latency, cost, *, status="success", prompt=10, completion=5):
    return UsageRecord.objects.create(
        tenant=tenant, api_key=key, created_at=when, endpoint="chat.completions", requested_model=model,
        status=status, error_class="timeout" if status == "error" else "", latency_ms=latency,
        cost_usd=Decimal(cost), prompt_tokens=prompt, completion_tokens=completion,
    )


def rollup(*days: datetime, hours: tuple[datetime, ...] = ()) -> None:
    for day in days:
        rollup_bucket(granularity="day", bucket_start=day)
    for hour in hours:
        rollup_bucket(granularity="hour", bucket_start=hour)


@pytest.fixture
def usage(transactional_db) -> Usage:
    acme, globex = tenant_create(slug="acme"), tenant_create(slug="globex")
    ci, acme_raw = api_key_create(tenant=acme, name="ci")
    web, _ = api_key_create(tenant=acme, name="web")
    globex_key, globex_raw = api_key_create(tenant=globex)
    at = MAR1 + timedelta(hours=9)
    record(acme, ci, at, "gpt-4o", 100, "0.001")
    record(acme, ci, at + timedelta(minutes=1), "gpt-4o", 200, "0.002")
    record(acme, ci, at + timedelta(minutes=2), "gpt-4o", 300, "0.003")
    record(acme, web, at + timedelta(hours=1), "gpt-4o-mini", 50, "0.0001")
    record(acme, web, at + timedelta(hours=2), "gpt-4o-mini", 70, "0.0002", status="error")
    record(acme, ci, MAR2 + timedelta(hours=8), "gpt-4o-mini", 90, "0.0003", prompt=1000)
    record(acme, ci, MAR2 + timedelta(hours=20), "gpt-4o-mini", 110, "0.0004")
    record(acme, web, MAR3 + timedelta(hours=12, minutes=30), "gpt-4o", 500, "0.005")
    for i in range(5):
        record(globex, globex_key, at + timedelta(minutes=i), "gpt-4o", 9000, "7.5", prompt=99999)
    rollup(MAR1, MAR2, MAR3, hours=(MAR3 + timedelta(hours=12),))
    return Usage(acme_raw=acme_raw, globex_raw=globex_raw, ci=ci, web=web)


async def get(raw_key: str | None, **params):
    headers = {"Authorization": f"Bearer {raw_key}"} if raw_key else {}
    return await ApiClient().get("/v1/usage", params, headers=headers)


def by_group(body: dict) -> dict:
    return {entry["group"]: entry for entry in body["data"]}


async def test_group_by_day_with_date_range(usage):
    response = await get(usage.acme_raw, start="2026-03-01", end="2026-03-03", group_by="day")
    assert response.status_code == 200
    body = response.json()
    assert (body["object"], body["group_by"]) == ("usage", "day")
    assert (body["start"], body["end"]) == ("2026-03-01T00:00:00+00:00", "2026-03-03T00:00:00+00:00")
    assert [entry["group"] for entry in body["data"]] == ["2026-03-01", "2026-03-02"]  # end is exclusive
    mar1, mar2 = body["data"]
    latency = {name: mar1.pop(name) for name in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")}
    assert mar1 == {
        "group": "2026-03-01", "requests": 5, "errors": 1, "prompt_tokens": 50, "completion_tokens": 25,
        "cost_usd": "0.00630000",
    }
    # Percentiles from the sketch: within 1 % of the value of rank floor(q (n - 1)) of 50, 70, 100, 200, 300.
    assert latency["latency_p50_ms"] == pytest.approx(100, rel=0.01)
    assert latency["latency_p95_ms"] == pytest.approx(200, rel=0.01)
    assert latency["latency_p99_ms"] == pytest.approx(200, rel=0.01)
    assert (mar2["requests"], mar2["prompt_tokens"], mar2["cost_usd"]) == (2, 1010, "0.00070000")
    assert mar2["latency_p50_ms"] == pytest.approx(90, rel=0.01)
    assert mar2["latency_p95_ms"] == pytest.approx(90, rel=0.01)


async def test_group_by_model_merges_days(usage):
    body = (await get(usage.acme_raw, start="2026-03-01", end="2026-03-04", group_by="model")).json()
    groups = by_group(body)
    assert set(groups) == {"gpt-4o", "gpt-4o-mini"}
    assert (groups["gpt-4o"]["requests"], groups["gpt-4o"]["cost_usd"]) == (4, "0.01100000")
    assert (groups["gpt-4o-mini"]["requests"], groups["gpt-4o-mini"]["errors"]) == (4, 1)
    assert groups["gpt-4o-mini"]["cost_usd"] == "0.00100000"
    # Across days, the days' sketches merge: the p50 of 100, 200, 300 (March 1) and 500 (March 3).
    assert groups["gpt-4o"]["latency_p50_ms"] == pytest.approx(200, rel=0.01)
    assert groups["gpt-4o"]["latency_p95_ms"] == pytest.approx(300, rel=0.01)


async def test_group_by_key(usage):
    body = (await get(usage.acme_raw, start="2026-03-01", end="2026-03-04", group_by="key")).json()
    groups = by_group(body)
    assert set(groups) == {str(usage.ci.pk), str(usage.web.pk)}
    ci, web = groups[str(usage.ci.pk)], groups[str(usage.web.pk)]
    assert (ci["requests"], ci["cost_usd"], ci["key_name"], ci["key_prefix"]) == (5, "0.00670000", "ci", usage.ci.prefix)
    assert (web["requests"], web["errors"], web["key_name"]) == (3, 1, "web")


async def test_start_filters_and_datetimes_read_hourly_rollups(usage):
    body = (await get(usage.acme_raw, start="2026-03-02", end="2026-03-04", group_by="day")).json()
    assert [entry["group"] for entry in body["data"]] == ["2026-03-02", "2026-03-03"]

    body = (await get(usage.acme_raw, start="2026-03-03T12:10:00Z", end="2026-03-03T12:45:00Z", group_by="model")).json()
    assert (body["start"], body["end"]) == ("2026-03-03T12:00:00+00:00", "2026-03-03T13:00:00+00:00")
    assert [(e["group"], e["requests"], e["cost_usd"]) for e in body["data"]] == [("gpt-4o", 1, "0.00500000")]

    body = (await get(usage.acme_raw, start="2026-03-03T13:00:00+00:00", end="2026-03-04", group_by="model")).json()
    assert body["data"] == []


async def test_default_range_is_the_last_30_days(usage, transactional_db):
    from asgiref.sync import sync_to_async

    from accounting.models import TenantApiKey

    @sync_to_async
    def recent_records():
        key = TenantApiKey.objects.get(pk=usage.ci.pk)
        now = timezone.now()
        record(key.tenant, key, now, "recent-model", 10, "0.5")
        record(key.tenant, key, now - timedelta(days=40), "old-model", 10, "0.5")
        rollup(now.replace(hour=0, minute=0, second=0, microsecond=0),
               (now - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0))
        return now

    now = await recent_records()
    body = (await get(usage.acme_raw, group_by="model")).json()
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert body["end"] == tomorrow.isoformat()
    assert body["start"] == (tomorrow - timedelta(days=30)).isoformat()
    assert set(by_group(body)) == {"recent-model"}
    body = (await get(usage.acme_raw)).json()
    assert body["group_by"] == "day" and len(body["data"]) == 1


async def test_a_tenant_sees_only_its_own_usage(usage):
    acme = (await get(usage.acme_raw, start="2026-03-01", end="2026-03-02", group_by="model")).json()
    globex = (await get(usage.globex_raw, start="2026-03-01", end="2026-03-02", group_by="model")).json()
    assert by_group(acme)["gpt-4o"]["requests"] == 3
    assert [(e["group"], e["requests"], e["cost_usd"]) for e in globex["data"]] == [("gpt-4o", 5, "37.50000000")]
    for group_by in ("day", "key", "model"):
        body = (await get(usage.acme_raw, start="2026-03-01", end="2026-03-04", group_by=group_by)).json()
        assert sum(entry["requests"] for entry in body["data"]) == 8
        assert all(entry["prompt_tokens"] < 99999 for entry in body["data"])


async def test_without_a_valid_key_401(usage):
    response = await get(None)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    response = await get("sk-gw-not-a-key")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-01"}, "end"),
        ({"start": "0001-01-01"}, "start"),
        ({"group_by": "week"}, "group_by"),
        ({"start": "2026-03-02", "end": "2026-03-01"}, "start"),
        ({"start": "2026-03-01", "end": "2026-03-01"}, "start"),
    ],
)
async def test_bad_parameters_400_naming_the_parameter(usage, params, param):
    response = await get(usage.acme_raw, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert param in error["message"]


async def test_only_get(usage):
    response = await ApiClient().post("/v1/usage", headers={"Authorization": f"Bearer {usage.acme_raw}"})
    assert response.status_code == 405
