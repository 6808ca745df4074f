"""Incremental rollups on PostgreSQL: runs that add records in, late and corrected records among
them, end where a recompute from raw records ends; percentiles stay within the sketch's bound."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from accounting.models import UsageRecord, UsageRecordChange, UsageRollup
from accounting.rollups import rollup_bucket, rollup_recent
from accounting.services import api_key_create, tenant_create, usage_record_correct
from accounting.sketches import RELATIVE_ACCURACY, sketch_add, sketch_key, sketch_merge, sketch_quantiles

pytestmark = pytest.mark.django_db

UTC = dt_timezone.utc
DAY = datetime(2026, 5, 4, tzinfo=UTC)
FIELDS = ("requests", "errors", "errors_by_class", "prompt_tokens", "completion_tokens", "cost_usd", "cache_hits",
          "saved_cost_usd", "latency_sketch", "ttft_sketch", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
          "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms")


def rows() -> dict:
    return {
        (r.granularity, r.bucket_start, r.tenant_id, r.dimension, r.value): tuple(getattr(r, f) for f in FIELDS)
        for r in UsageRollup.objects.all()
    }


def record(rng: random.Random, tenant, key, when: datetime, **fields) -> UsageRecord:
    status = rng.choice(["success", "success", "error", "cancelled"])
    values = dict(
        tenant=tenant, api_key=key, created_at=when, endpoint="chat.completions",
        requested_model=rng.choice(["m-a", "m-b", "m-c"]), task=rng.choice(["", "t1"]),
        tags=rng.choice([[], ["x"], ["x", "y"], "junk"]), end_user=rng.choice(["", "u1", "u2"]),
        route=rng.choice(["", "r1"]), status=status,
        error_class=rng.choice(["timeout", ""]) if status == "error" else "",
        prompt_tokens=rng.randint(0, 900), completion_tokens=rng.randint(0, 300),
        cost_usd=Decimal(rng.randint(0, 10**6)) / Decimal(10**8), latency_ms=rng.choice([0, rng.randint(1, 20_000)]),
        ttft_ms=rng.choice([None, rng.randint(0, 2_000)]), cache=rng.choice(["", "hit", "miss", "semantic"]),
        saved_cost_usd=Decimal(rng.randint(0, 1000)) / Decimal(10**8),
    )
    values.update(fields)
    return UsageRecord.objects.create(**values)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_runs_equal_a_recompute_with_late_and_corrected_records(seed):
    rng = random.Random(seed)
    tenants = [tenant_create(slug=f"t{seed}-{n}") for n in range(2)]
    keys = {t.pk: [api_key_create(tenant=t)[0], None] for t in tenants}
    made: list[UsageRecord] = []
    now = DAY + timedelta(hours=20)
    for step in range(6):
        for _ in range(rng.randint(5, 25)):
            tenant = rng.choice(tenants)
            # Mostly the last hours; some late (journal replays, slow commits) into hours and days back.
            back = rng.choice([timedelta(minutes=rng.randint(0, 120))] * 3 + [timedelta(hours=rng.randint(3, 50))])
            made.append(record(rng, tenant, rng.choice(keys[tenant.pk]), now - back))
        for corrected in rng.sample(made, k=min(len(made), rng.randint(0, 6))):
            usage_record_correct(record_id=corrected.pk, prompt_tokens=rng.randint(0, 5000),
                                 completion_tokens=rng.randint(0, 500))
        if step == 2:  # a record committed after a larger id: its id is a gap until it appears
            gap_id = UsageRecord.objects.order_by("-id").values_list("id", flat=True).first() + 1000
            made.append(record(rng, tenants[0], None, now - timedelta(hours=30), id=gap_id + 1))
        if step == 3:
            made.append(record(rng, tenants[1], None, now - timedelta(hours=30), id=gap_id))
            usage_record_correct(record_id=gap_id, prompt_tokens=7)
        report = rollup_recent(now=now)
        assert report.records_read > 0
        now += timedelta(minutes=rng.randint(1, 30))
    assert UsageRecordChange.objects.exists()

    incremental = rows()
    buckets = {(g, start) for g, start, *_ in incremental}
    UsageRollup.objects.all().delete()
    for granularity, start in sorted(buckets):
        rollup_bucket(granularity=granularity, bucket_start=start)
    assert rows() == incremental  # every field, sketches and percentiles included, exactly

    # And both are the raw records: totals exact.
    day_totals = UsageRollup.objects.filter(granularity="day", dimension="total")
    assert sum(day_totals.values_list("requests", flat=True)) == UsageRecord.objects.count() == len(made)
    assert sum(day_totals.values_list("prompt_tokens", flat=True)) == sum(
        UsageRecord.objects.values_list("prompt_tokens", flat=True))
    assert sum(day_totals.values_list("cost_usd", flat=True)) == sum(
        UsageRecord.objects.values_list("cost_usd", flat=True))


def test_a_correction_moves_the_counts_once():
    rng = random.Random(9)
    tenant = tenant_create(slug="acme")
    first = record(rng, tenant, None, DAY + timedelta(hours=3), prompt_tokens=100, completion_tokens=10)
    rollup_recent(now=DAY + timedelta(hours=4))
    usage_record_correct(record_id=first.pk, prompt_tokens=150)
    usage_record_correct(record_id=first.pk, completion_tokens=12)
    rollup_recent(now=DAY + timedelta(hours=4, minutes=1))
    rollup_recent(now=DAY + timedelta(hours=4, minutes=2))  # nothing new: nothing changes
    for granularity, start in (("hour", DAY + timedelta(hours=3)), ("day", DAY)):
        total = UsageRollup.objects.get(granularity=granularity, bucket_start=start, dimension="total")
        assert (total.requests, total.prompt_tokens, total.completion_tokens) == (1, 150, 12)
    with pytest.raises(ValueError, match="cost_usd"):
        usage_record_correct(record_id=first.pk, cost_usd=Decimal("1"))


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


@pytest.mark.parametrize("seed", range(5))
def test_merged_sketches_are_within_one_percent_of_exact_percentiles(seed):
    """Per bucket and merged across buckets (hours into a day, days into a month), against the
    exact value of the same rank; a log-normal spread of latencies, 1 ms to minutes."""
    rng = random.Random(seed)
    buckets = [[max(1, round(rng.lognormvariate(6, 1.5))) for _ in range(rng.randint(1, 400))] for _ in range(30)]
    sketches = []
    for values in buckets:
        bins: dict = {}
        for value in values:
            sketch_add(bins, {sketch_key(value): 1})
        sketches.append(bins)
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            want = exact(values, q)
            assert abs(sketch_quantiles(bins)[name] - want) <= RELATIVE_ACCURACY * want
    everything = [value for values in buckets for value in values]
    merged = sketch_quantiles(sketch_merge(sketches))
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        want = exact(everything, q)
        assert abs(merged[name] - want) <= RELATIVE_ACCURACY * want


def test_run_rollups_prints_what_it_processed():
    rng = random.Random(4)
    tenant = tenant_create(slug="acme")
    for minute in range(3):
        record(rng, tenant, None, DAY + timedelta(hours=2, minutes=minute))
    out = StringIO()
    call_command("run_rollups", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("usage: records read 3, changes applied 0, buckets touched 2, rows written ")
    assert "seconds " in lines[0] and lines[1].startswith("feedback: records read 3")
    out = StringIO()
    call_command("run_rollups", "--recompute", "2026-05-04T02:00", "2026-05-04T03:00", stdout=out)
    assert out.getvalue().startswith("usage recompute: records read 0, changes applied 0, buckets touched 2,")
    assert UsageRollup.objects.get(granularity="hour", dimension="total").requests == 3
