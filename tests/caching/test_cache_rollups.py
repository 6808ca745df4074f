"""Cache hits and saved cost in the rollups (both computing paths) and on the tenant dashboard."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from django.utils import timezone

from accounting.models import UsageRecord, UsageRollup
from accounting.rollups import rollup_bucket
from accounting.services import tenant_create

pytestmark = pytest.mark.django_db

HOUR = datetime(2026, 3, 10, 9, tzinfo=dt_timezone.utc)


def record(tenant, *, cache: str, cost: str, saved: str, minute: int, model: str = "gpt-4o-mini") -> UsageRecord:
    return UsageRecord.objects.create(
        tenant=tenant, created_at=HOUR + timedelta(minutes=minute), endpoint="chat.completions",
        requested_model=model, status="success", http_status=200, prompt_tokens=10, completion_tokens=5,
        cost_usd=Decimal(cost), saved_cost_usd=Decimal(saved), cache=cache, latency_ms=5,
    )


@pytest.fixture
def tenants():
    acme, globex = tenant_create(slug="acme"), tenant_create(slug="globex")
    record(acme, cache="miss", cost="0.02000000", saved="0", minute=1)
    record(acme, cache="hit", cost="0", saved="0.02000000", minute=2)
    record(acme, cache="semantic", cost="0", saved="0.01500000", minute=3, model="gpt-4o")
    record(acme, cache="", cost="0.00004000", saved="0", minute=4)
    record(globex, cache="hit", cost="0", saved="0.00000700", minute=5)
    return acme, globex


def test_rollups_count_cache_hits_and_saved_cost(tenants):
    acme, globex = tenants
    rollup_bucket(granularity="hour", bucket_start=HOUR)
    total = UsageRollup.objects.get(granularity="hour", tenant=acme, dimension="total")
    assert (total.requests, total.cache_hits, total.saved_cost_usd) == (4, 2, Decimal("0.03500000"))
    by_model = UsageRollup.objects.get(granularity="hour", tenant=acme, dimension="model", value="gpt-4o")
    assert (by_model.cache_hits, by_model.saved_cost_usd) == (1, Decimal("0.01500000"))
    other = UsageRollup.objects.get(granularity="hour", tenant=globex, dimension="total")
    assert (other.cache_hits, other.saved_cost_usd) == (1, Decimal("0.00000700"))


def test_tenant_dashboard_shows_hit_rate_and_saved_cost(tenants, client, admin_user):
    acme, _ = tenants
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    UsageRecord.objects.filter(tenant=acme).update(created_at=now)
    rollup_bucket(granularity="hour", bucket_start=now)
    rollup_bucket(granularity="day", bucket_start=now.replace(hour=0))
    client.force_login(admin_user)
    page = client.get("/dashboard/acme/?range=24h").content.decode()
    assert 'data-total="cache-hit-rate">50.00%<' in page
    assert 'data-total="saved">$0.0350<' in page
