"""Rollups on PostgreSQL, checked against numbers computed here straight from the raw records:
totals exactly, percentiles within the sketch's 1 % of the exact value of their rank."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest

from accounting.models import RollupCursor, UsageRecord, UsageRollup
from accounting.rollups import rollup_bucket, rollup_recent
from accounting.services import api_key_create, tenant_create

pytestmark = pytest.mark.django_db

UTC = dt_timezone.utc
DAY1 = datetime(2026, 3, 10, tzinfo=UTC)
HOURS = [DAY1 + timedelta(hours=h) for h in (0, 9, 10, 23)] + [DAY1 + timedelta(days=1, hours=0)]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-haiku-4-5", ""]
TASKS = ["", "", "summarize", "classify"]
TAGS = [[], ["a"], ["a", "b"], ["b", "b"], [1, "c", None], ["", "d"], "not-a-list", {"k": "v"}]
USERS = ["", "user-1", "user-2"]
ERROR_CLASSES = ["rate_limited", "timeout", ""]


# --- the expectation, computed without the code under test --------------------------------------------
def quantile(values: list, p: int) -> float | None:
    """The exact value of rank floor(p/100 * (n - 1)) (DDSketch's lower quantile), None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[math.floor(p / 100 * (len(ordered) - 1))])


def expected_rows(records: list[UsageRecord], start: datetime, end: datetime) -> dict:
    groups = defaultdict(list)
    for r in records:
        if not start <= r.created_at < end:
            continue
        keys = [("total", ""), ("api_key", str(r.api_key_id) if r.api_key_id else ""), ("model", r.requested_model)]
        if r.task:
            keys.append(("task", r.task))
        if isinstance(r.tags, list):
            keys += [("tag", tag) for tag in set(r.tags) if isinstance(tag, str) and tag != ""]
        if r.end_user:
            keys.append(("end_user", r.end_user))
        if r.route:
            keys.append(("route", r.route))
        keys.append(("endpoint", r.endpoint))
        for dimension, value in keys:
            groups[(r.tenant_id, dimension, value)].append(r)
    expected = {}
    for key, rs in groups.items():
        errors = defaultdict(int)
        for r in rs:
            if r.status == "error":
                errors[r.error_class or "unknown"] += 1
        latencies = [r.latency_ms for r in rs]
        ttfts = [r.ttft_ms for r in rs if r.ttft_ms is not None]
        expected[key] = {
            "requests": len(rs),
            "errors": sum(1 for r in rs if r.status == "error"),
            "errors_by_class": dict(errors),
            "prompt_tokens": sum(r.prompt_tokens for r in rs),
            "completion_tokens": sum(r.completion_tokens for r in rs),
            "cost_usd": sum((r.cost_usd for r in rs), Decimal(0)),
            "latency_p50_ms": quantile(latencies, 50),
            "latency_p95_ms": quantile(latencies, 95),
            "latency_p99_ms": quantile(latencies, 99),
            "ttft_p50_ms": quantile(ttfts, 50),
            "ttft_p95_ms": quantile(ttfts, 95),
            "ttft_p99_ms": quantile(ttfts, 99),
        }
    return expected


def stored_rows(granularity: str, bucket_start: datetime) -> dict:
    rows = UsageRollup.objects.filter(granularity=granularity, bucket_start=bucket_start)
    return {
        (row.tenant_id, row.dimension, row.value): {
            "requests": row.requests, "errors": row.errors, "errors_by_class": row.errors_by_class,
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "cost_usd": row.cost_usd, "latency_p50_ms": row.latency_p50_ms,
            "latency_p95_ms": row.latency_p95_ms, "ttft_p50_ms": row.ttft_p50_ms, "ttft_p95_ms": row.ttft_p95_ms,
            "latency_p99_ms": row.latency_p99_ms, "ttft_p99_ms": row.ttft_p99_ms,
        }
        for row in rows
    }


def assert_rows_equal(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, want in expected.items():
        got = actual[key]
        for name, value in want.items():
            if name.endswith("_ms") and value is not None:
                assert abs(got[name] - value) <= 0.01 * value + 1e-9, (key, name, got[name], value)
            else:
                assert got[name] == value, (key, name)


def snapshot(granularity: str, bucket_start: datetime) -> list[tuple]:
    rows = UsageRollup.objects.filter(granularity=granularity, bucket_start=bucket_start).order_by("pk")
    return [tuple(v for k, v in row.__dict__.items() if k not in ("_state", "computed_at")) for row in rows]


# --- data -----------------------------------------------------------------------------------------------
def record_create(tenant, *, created_at, rng: random.Random, **fields) -> UsageRecord:
    status = rng.choice(["success", "success", "success", "error", "cancelled"])
    defaults = dict(
        tenant=tenant, created_at=created_at, endpoint="chat.completions",
        requested_model=rng.choice(MODELS), task=rng.choice(TASKS), tags=rng.choice(TAGS),
        end_user=rng.choice(USERS), status=status,
        error_class=rng.choice(ERROR_CLASSES) if status == "error" else ("client_disconnected" if status == "cancelled" else ""),
        http_status=500 if status == "error" else 200,
        prompt_tokens=rng.randint(0, 5000), completion_tokens=rng.randint(0, 2000),
        cached_tokens=rng.randint(0, 100),
        cost_usd=Decimal(rng.randint(0, 10**7)) / Decimal(10**8),
        latency_ms=rng.randint(1, 30_000), ttft_ms=rng.choice([None, rng.randint(1, 3000)]),
        stream=rng.random() < 0.5,
    )
    defaults.update(fields)
    return UsageRecord.objects.create(**defaults)


@pytest.fixture
def records() -> list[UsageRecord]:
    rng = random.Random(20260310)
    acme, globex = tenant_create(slug="acme"), tenant_create(slug="globex")
    keys = {acme: [api_key_create(tenant=acme, name=n)[0] for n in ("ci", "web")] + [None],
            globex: [api_key_create(tenant=globex)[0]]}
    made = []
    for hour in HOURS:
        for _ in range(rng.randint(8, 25)):
            tenant = rng.choice([acme, acme, globex])
            when = hour + timedelta(seconds=rng.randint(0, 3599), microseconds=rng.randint(0, 999_999))
            made.append(record_create(tenant, created_at=when, rng=rng, api_key=rng.choice(keys[tenant])))
    # The edges of a bucket: its first instant is in it, the next bucket's first instant is not.
    made.append(record_create(acme, created_at=HOURS[2], rng=rng, api_key=keys[acme][0]))
    made.append(record_create(acme, created_at=HOURS[2] - timedelta(microseconds=1), rng=rng, api_key=None))
    made.append(record_create(globex, created_at=HOURS[2] + timedelta(hours=1), rng=rng, api_key=keys[globex][0]))
    # A group without any time to first token (embeddings are not streamed).
    made.append(record_create(acme, created_at=HOURS[1], rng=rng, task="embed", ttft_ms=None, stream=False,
                              endpoint="embeddings"))
    return made


def buckets() -> list[tuple[str, datetime]]:
    return [("hour", h) for h in HOURS] + [
        ("hour", HOURS[2] - timedelta(hours=1)), ("hour", HOURS[2] + timedelta(hours=1)),
        ("day", DAY1), ("day", DAY1 + timedelta(days=1)),
    ]


def bucket_bounds(granularity: str, start: datetime) -> tuple[datetime, datetime]:
    return start, start + (timedelta(hours=1) if granularity == "hour" else timedelta(days=1))


# --- tests ------------------------------------------------------------------------------------------------
def test_every_rollup_equals_sums_and_percentiles_of_the_raw_records(records):
    for granularity, start in buckets():
        written = rollup_bucket(granularity=granularity, bucket_start=start)
        expected = expected_rows(records, *bucket_bounds(granularity, start))
        assert written == len(expected)
        assert_rows_equal(stored_rows(granularity, start), expected)
    # The data exercises every dimension, several tenants, errors of several classes, null ttfts.
    day = stored_rows("day", DAY1)
    assert {dimension for _, dimension, _ in day} == {"total", "api_key", "model", "task", "tag", "end_user", "endpoint"}
    assert {value for _, dimension, value in day if dimension == "tag"} == {"a", "b", "c", "d"}
    assert len({tenant for tenant, _, _ in day}) == 2
    assert any(len(row["errors_by_class"]) > 1 for row in day.values())
    assert any(row["ttft_p50_ms"] is None for row in day.values())


def test_recomputing_gives_identical_rows_and_drops_rows_without_records(records):
    for granularity, start in buckets():
        rollup_bucket(granularity=granularity, bucket_start=start)
    before = {bucket: snapshot(*bucket) for bucket in buckets()}
    for granularity, start in buckets():
        rollup_bucket(granularity=granularity, bucket_start=start)
    assert {bucket: snapshot(*bucket) for bucket in buckets()} == before

    gone = [r for r in records if r.created_at.date() == DAY1.date() and r.requested_model == "claude-haiku-4-5"]
    UsageRecord.objects.filter(pk__in=[r.pk for r in gone]).delete()
    remaining = [r for r in records if r not in gone]
    rollup_bucket(granularity="day", bucket_start=DAY1)
    assert_rows_equal(stored_rows("day", DAY1), expected_rows(remaining, *bucket_bounds("day", DAY1)))
    assert not UsageRollup.objects.filter(
        granularity="day", bucket_start=DAY1, dimension="model", value="claude-haiku-4-5"
    ).exists()


def test_rollup_recent_does_current_buckets_and_picks_up_late_records(records):
    now = datetime(2026, 3, 20, 14, 30, tzinfo=UTC)
    fresh = record_create(records[0].tenant, created_at=now - timedelta(minutes=5), rng=random.Random(1))
    rollup_recent(now=now)
    everything = records + [fresh]
    # The first run saw every record as new: all their buckets are there, plus the current ones.
    current = [("hour", now.replace(minute=0)), ("day", now.replace(hour=0, minute=0))]
    for granularity, start in buckets() + current:
        expected = expected_rows(everything, *bucket_bounds(granularity, start))
        assert_rows_equal(stored_rows(granularity, start), expected)

    later = now + timedelta(minutes=1)
    old_hour = HOURS[1]
    late = record_create(records[0].tenant, created_at=old_hour + timedelta(minutes=7), rng=random.Random(2),
                         requested_model="late-model", task="late-task", tags=["late"])
    assert not UsageRollup.objects.filter(value="late-model").exists()
    rollup_recent(now=later)
    everything.append(late)
    for granularity, start in (("hour", old_hour), ("day", DAY1)):
        expected = expected_rows(everything, *bucket_bounds(granularity, start))
        assert_rows_equal(stored_rows(granularity, start), expected)
    assert UsageRollup.objects.filter(value="late-model", granularity="hour", bucket_start=old_hour).exists()


def test_rollup_recent_picks_up_a_record_committed_after_a_larger_id(records):
    """An id taken by a slow transaction becomes visible after the cursor moved past it."""
    rng = random.Random(3)
    tenant = records[0].tenant
    base = UsageRecord.objects.order_by("-id").values_list("id", flat=True).first() + 1000
    record_create(tenant, created_at=HOURS[0], rng=rng, id=base)
    record_create(tenant, created_at=HOURS[0], rng=rng, id=base + 2)
    now = datetime(2026, 3, 20, 14, 30, tzinfo=UTC)
    rollup_recent(now=now)
    cursor = RollupCursor.objects.get(name="usage")
    assert cursor.last_record_id == base + 2
    assert [base + 1, base + 1] in [gap[:2] for gap in cursor.pending_gaps]

    old_day = datetime(2026, 2, 1, 5, tzinfo=UTC)
    slow = record_create(tenant, created_at=old_day, rng=rng, id=base + 1, requested_model="slow-model")
    rollup_recent(now=now + timedelta(minutes=1))
    assert UsageRollup.objects.get(granularity="day", bucket_start=old_day.replace(hour=0), tenant=tenant,
                                   dimension="model", value="slow-model").requests == 1
    assert UsageRollup.objects.filter(granularity="hour", bucket_start=old_day, dimension="total").exists()
    assert [base + 1, base + 1] not in [gap[:2] for gap in RollupCursor.objects.get(name="usage").pending_gaps]
    assert slow.pk == base + 1


def test_rollup_recent_twice_changes_nothing(records):
    now = datetime(2026, 3, 20, 14, 30, tzinfo=UTC)
    rollup_recent(now=now)
    before = {bucket: snapshot(*bucket) for bucket in buckets()}
    rollup_recent(now=now)
    assert {bucket: snapshot(*bucket) for bucket in buckets()} == before


def test_rollup_bucket_rejects_a_bucket_start_that_is_not_one():
    with pytest.raises(ValueError, match="not the start"):
        rollup_bucket(granularity="hour", bucket_start=HOURS[0] + timedelta(minutes=1))
    with pytest.raises(ValueError, match="granularity"):
        rollup_bucket(granularity="week", bucket_start=HOURS[0])
    with pytest.raises(ValueError, match="aware"):
        rollup_bucket(granularity="day", bucket_start=datetime(2026, 3, 10))
