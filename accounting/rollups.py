"""Usage rollups: UsageRecords aggregated per tenant, hour or day, and dimension.

A bucket is always recomputed whole from the raw records in [bucket_start, bucket_end), for every
tenant at once, and written with `update_or_create` inside one transaction; rows of the bucket that
no longer have records are deleted. Recomputing a bucket therefore converges on the same rows, so
a task retry, a second beat run or a manual backfill never double-counts.

Percentiles (p50, p95 of latency_ms and of ttft_ms, nulls ignored) follow PostgreSQL's
`percentile_cont`: linear interpolation between the closest ranks. For n sorted values
x[0] <= ... <= x[n-1] and a fraction p, with h = p * (n - 1):

    percentile(p) = x[floor(h)] + (h - floor(h)) * (x[ceil(h)] - x[floor(h)])

the same definition as `statistics.quantiles(..., method="inclusive")`, numpy's default and
R's type 7. On PostgreSQL the database computes it (`percentile_cont ... WITHIN GROUP`); elsewhere
(SQLite, the embedded mode) `percentile_cont` below computes it with the same float arithmetic as
PostgreSQL's `float8_lerp`, so both paths give identical numbers.

`rollup_recent` is what beat runs every minute: the current and previous hour and day, plus every
bucket that received records since its last run, however old their `created_at` (see
`RollupCursor`).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounting.models import RollupCursor, TenantApiKey, UsageRecord, UsageRollup

Granularity = UsageRollup.Granularity
Dimension = UsageRollup.Dimension
STEPS = {Granularity.HOUR: timedelta(hours=1), Granularity.DAY: timedelta(days=1)}
RowKey = tuple[int, str, str]  # (tenant_id, dimension, value)

VALUE_MAX_LENGTH = UsageRollup._meta.get_field("value").max_length
UNKNOWN_ERROR_CLASS = "unknown"
CURSOR_NAME = "usage"
# Records read per rollup_recent run; a large backlog is caught up over several runs.
SCAN_LIMIT = 50_000
# Id gaps (ids not visible yet: inserts still in flight, or rolled back) are re-checked for this
# long, and at most this many are kept.
GAP_TTL = timedelta(days=1)
MAX_GAPS = 1_000


# --- buckets ----------------------------------------------------------------------------------------
def bucket_floor(*, granularity: str, when: datetime) -> datetime:
    """The start (UTC) of the bucket holding `when`."""
    when = when.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)
    return when.replace(hour=0) if granularity == Granularity.DAY else when


def bucket_end(*, granularity: str, bucket_start: datetime) -> datetime:
    return bucket_start + STEPS[granularity]


def bucket_checked(granularity: str, bucket_start: datetime) -> datetime:
    if granularity not in STEPS:
        raise ValueError(f"Unknown granularity {granularity!r}; use one of {sorted(STEPS)}.")
    if timezone.is_naive(bucket_start):
        raise ValueError("bucket_start must be timezone-aware.")
    start = bucket_start.astimezone(dt_timezone.utc)
    if bucket_floor(granularity=granularity, when=start) != start:
        raise ValueError(f"{bucket_start.isoformat()} is not the start of a {granularity} bucket.")
    return start


# --- percentiles ------------------------------------------------------------------------------------
def percentile_cont(values: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's `percentile_cont(fraction)`, nulls already removed; None for no values.

    Same steps as PostgreSQL's `percentile_cont_final_common` and `float8_lerp`, in doubles.
    """
    if not values:
        return None
    ordered = sorted(float(value) for value in values)
    rank = fraction * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    if high == low:
        return ordered[low]
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


# --- computing one bucket's rows --------------------------------------------------------------------
_RECORD_FIELDS = (
    "tenant_id", "api_key_id", "requested_model", "task", "tags", "end_user", "route", "status",
    "error_class", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms",
    "cache", "saved_cost_usd", "endpoint",
)
CACHE_HITS = ("hit", "semantic")  # UsageRecord.cache values of an answer served from the cache


def _tags(tags) -> set[str]:
    """Distinct non-empty string tags; anything else in the JSON is ignored (as in the SQL)."""
    if not isinstance(tags, list):
        return set()
    return {tag[:VALUE_MAX_LENGTH] for tag in tags if isinstance(tag, str) and tag}


def _dimension_values(record: dict) -> Iterator[tuple[str, str]]:
    yield Dimension.TOTAL, ""
    yield Dimension.API_KEY, "" if record["api_key_id"] is None else str(record["api_key_id"])
    yield Dimension.MODEL, record["requested_model"]
    if record["task"]:
        yield Dimension.TASK, record["task"]
    for tag in sorted(_tags(record["tags"])):
        yield Dimension.TAG, tag
    if record["end_user"]:
        yield Dimension.END_USER, record["end_user"]
    if record["route"]:
        yield Dimension.ROUTE, record["route"]
    yield Dimension.ENDPOINT, record["endpoint"]


def _summarize(records: list[dict]) -> dict:
    latencies = [r["latency_ms"] for r in records if r["latency_ms"] is not None]
    ttfts = [r["ttft_ms"] for r in records if r["ttft_ms"] is not None]
    errors = Counter(
        r["error_class"] or UNKNOWN_ERROR_CLASS for r in records if r["status"] == UsageRecord.Status.ERROR
    )
    return {
        "requests": len(records),
        "errors": sum(errors.values()),
        "errors_by_class": dict(sorted(errors.items())),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "cost_usd": sum((r["cost_usd"] for r in records), Decimal("0")),
        "cache_hits": sum(1 for r in records if r["cache"] in CACHE_HITS),
        "saved_cost_usd": sum((r["saved_cost_usd"] for r in records), Decimal("0")),
        "latency_p50_ms": percentile_cont(latencies, 0.5),
        "latency_p95_ms": percentile_cont(latencies, 0.95),
        "ttft_p50_ms": percentile_cont(ttfts, 0.5),
        "ttft_p95_ms": percentile_cont(ttfts, 0.95),
    }


def rollup_rows_python(*, start: datetime, end: datetime) -> dict[RowKey, dict]:
    """The rows of [start, end) computed in Python: the path for SQLite, and the reference."""
    groups: dict[RowKey, list[dict]] = defaultdict(list)
    records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end).values(*_RECORD_FIELDS)
    for record in records.iterator(chunk_size=2_000):
        for dimension, value in _dimension_values(record):
            groups[(record["tenant_id"], dimension, value)].append(record)
    return {key: _summarize(records) for key, records in groups.items()}


# One row of `d` per (record, dimension value): the same expansion as `_dimension_values`.
_PG_DIMENSIONS = """
WITH r AS (
    SELECT tenant_id, api_key_id, requested_model, task, tags, end_user, route, status, error_class,
           prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, cache, saved_cost_usd, endpoint
    FROM {table}
    WHERE created_at >= %(start)s AND created_at < %(end)s
), d AS (
    SELECT 'total' AS dimension, '' AS value, r.* FROM r
    UNION ALL SELECT 'api_key', COALESCE(r.api_key_id::text, ''), r.* FROM r
    UNION ALL SELECT 'model', r.requested_model, r.* FROM r
    UNION ALL SELECT 'task', r.task, r.* FROM r WHERE r.task <> ''
    UNION ALL SELECT 'tag', t.tag, r.* FROM r CROSS JOIN LATERAL (
        SELECT DISTINCT left(e #>> '{{}}', {value_max}) AS tag
        FROM jsonb_array_elements(CASE jsonb_typeof(r.tags) WHEN 'array' THEN r.tags ELSE '[]' END) AS e
        WHERE jsonb_typeof(e) = 'string' AND e #>> '{{}}' <> ''
    ) AS t
    UNION ALL SELECT 'end_user', r.end_user, r.* FROM r WHERE r.end_user <> ''
    UNION ALL SELECT 'route', r.route, r.* FROM r WHERE r.route <> ''
    UNION ALL SELECT 'endpoint', r.endpoint, r.* FROM r
)
"""
_PG_STATS = """
SELECT tenant_id, dimension, value, count(*), count(*) FILTER (WHERE status = %(error)s),
       sum(prompt_tokens), sum(completion_tokens), sum(cost_usd),
       count(*) FILTER (WHERE cache IN ('hit', 'semantic')), sum(saved_cost_usd),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms)
FROM d GROUP BY tenant_id, dimension, value
"""
_PG_ERRORS = """
SELECT tenant_id, dimension, value, COALESCE(NULLIF(error_class, ''), %(unknown)s), count(*)
FROM d WHERE status = %(error)s GROUP BY 1, 2, 3, 4 ORDER BY 4
"""
_STAT_COLUMNS = (
    "requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd", "cache_hits", "saved_cost_usd",
    "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms",
)


def rollup_rows_postgres(*, start: datetime, end: datetime) -> dict[RowKey, dict]:
    """The rows of [start, end) computed by PostgreSQL (sums and `percentile_cont` in SQL)."""
    dimensions = _PG_DIMENSIONS.format(table=UsageRecord._meta.db_table, value_max=VALUE_MAX_LENGTH)
    params = {"start": start, "end": end, "error": UsageRecord.Status.ERROR, "unknown": UNKNOWN_ERROR_CLASS}
    rows: dict[RowKey, dict] = {}
    with connection.cursor() as cursor:
        cursor.execute(dimensions + _PG_STATS, params)
        for tenant_id, dimension, value, *stats in cursor.fetchall():
            rows[(tenant_id, dimension, value)] = dict(zip(_STAT_COLUMNS, stats), errors_by_class={})
        cursor.execute(dimensions + _PG_ERRORS, params)
        for tenant_id, dimension, value, error_class, count in cursor.fetchall():
            rows[(tenant_id, dimension, value)]["errors_by_class"][error_class] = count
    return rows


def rollup_rows_compute(*, start: datetime, end: datetime) -> dict[RowKey, dict]:
    if connection.vendor == "postgresql":
        return rollup_rows_postgres(start=start, end=end)
    return rollup_rows_python(start=start, end=end)


# --- writing buckets --------------------------------------------------------------------------------
def bucket_lock(name: str, granularity: str, start: datetime) -> None:
    """Serialize recomputations of one bucket (beat run, task retry, manual backfill).

    On PostgreSQL a transaction-scoped advisory lock; SQLite already serializes writers
    (the settings open transactions IMMEDIATE).
    """
    if connection.vendor == "postgresql":
        lock_id = zlib.crc32(f"{name}:{granularity}:{start.isoformat()}".encode())
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])


def bucket_rows_replace(*, model, granularity: str, start: datetime, rows: dict[RowKey, dict]) -> int:
    """Make a bucket's rows of `model` exactly `rows` (keyed by tenant, dimension, value): rows
    no longer computed are deleted, the others written. Run inside the caller's transaction."""
    bucket = model.objects.filter(granularity=granularity, bucket_start=start)
    stale = [
        pk for pk, *key in bucket.values_list("pk", "tenant_id", "dimension", "value") if tuple(key) not in rows
    ]
    if stale:
        model.objects.filter(pk__in=stale).delete()
    for (tenant_id, dimension, value), fields in sorted(rows.items()):
        model.objects.update_or_create(
            granularity=granularity, bucket_start=start, tenant_id=tenant_id,
            dimension=dimension, value=value, defaults=fields,
        )
    return len(rows)


@transaction.atomic
def rollup_bucket(*, granularity: str, bucket_start: datetime) -> int:
    """Recompute every rollup row of one bucket, for every tenant; return the number of rows.

    Idempotent: the rows depend only on the records of the bucket, so running it again (a retry,
    a late record, a backfill) converges on the same rows instead of adding to them.
    """
    start = bucket_checked(granularity, bucket_start)
    bucket_lock("usage-rollup", granularity, start)
    rows = rollup_rows_compute(start=start, end=bucket_end(granularity=granularity, bucket_start=start))
    return bucket_rows_replace(model=UsageRollup, granularity=granularity, start=start, rows=rows)


# --- finding the buckets to recompute -----------------------------------------------------------------
def _id_gaps(first: int, last: int, ids: Iterable[int]) -> list[tuple[int, int]]:
    """The ranges of [first, last] not in `ids` (sorted, all within [first, last])."""
    gaps, expected = [], first
    for record_id in ids:
        if record_id > expected:
            gaps.append((expected, record_id - 1))
        expected = record_id + 1
    if expected <= last:
        gaps.append((expected, last))
    return gaps


def _records_in_gaps(gaps: list[list]) -> list[tuple[int, datetime]]:
    if not gaps:
        return []
    where = Q()
    for first, last, _seen in gaps:
        where |= Q(id__range=(first, last))
    return list(UsageRecord.objects.filter(where).order_by("id").values_list("id", "created_at"))


def _dirty_hours(cursor: RollupCursor, *, now: datetime) -> set[datetime]:
    """Hours holding records the cursor has not seen yet; advances the cursor (not saved).

    Ids are taken from a sequence when a row is inserted but become visible when its transaction
    commits, so a smaller id can appear after a larger one was read (a slow transaction, a
    backfill). Ids skipped by a scan are kept as gaps and looked at again on each run, until
    `GAP_TTL` has passed (ids of rolled-back inserts never appear).
    """
    new = list(
        UsageRecord.objects.filter(id__gt=cursor.last_record_id)
        .order_by("id").values_list("id", "created_at")[:SCAN_LIMIT]
    )
    late = _records_in_gaps(cursor.pending_gaps)
    found = sorted(record_id for record_id, _ in late)
    gaps = []
    for first, last, seen in cursor.pending_gaps:
        if now.timestamp() - seen < GAP_TTL.total_seconds():
            inside = [record_id for record_id in found if first <= record_id <= last]
            gaps += [[a, b, seen] for a, b in _id_gaps(first, last, inside)]
    if new:
        ids = [record_id for record_id, _ in new]
        gaps += [[a, b, now.timestamp()] for a, b in _id_gaps(cursor.last_record_id + 1, ids[-1], ids)]
        cursor.last_record_id = ids[-1]
    cursor.pending_gaps = gaps[-MAX_GAPS:]
    return {bucket_floor(granularity=Granularity.HOUR, when=created) for _, created in new + late}


@transaction.atomic
def rollup_recent(*, now: datetime | None = None) -> int:
    """Recompute the current and previous hour and day, and every bucket with unseen records.

    Runs in one transaction holding the cursor row, so overlapping runs queue up and the cursor
    only advances together with the rollups it stands for. Returns the number of rows written.
    """
    now = now or timezone.now()
    cursor, _ = RollupCursor.objects.select_for_update().get_or_create(name=CURSOR_NAME)
    this_hour = bucket_floor(granularity=Granularity.HOUR, when=now)
    hours = {this_hour, this_hour - STEPS[Granularity.HOUR]} | _dirty_hours(cursor, now=now)
    today = bucket_floor(granularity=Granularity.DAY, when=now)
    days = {today, today - STEPS[Granularity.DAY]}
    days |= {bucket_floor(granularity=Granularity.DAY, when=hour) for hour in hours}
    written = sum(rollup_bucket(granularity=Granularity.HOUR, bucket_start=hour) for hour in sorted(hours))
    written += sum(rollup_bucket(granularity=Granularity.DAY, bucket_start=day) for day in sorted(days))
    cursor.save()
    return written


# --- reading (the /v1/usage API) ----------------------------------------------------------------------
GROUP_BY_DIMENSION = {
    "model": Dimension.MODEL, "key": Dimension.API_KEY, "day": Dimension.TOTAL, "route": Dimension.ROUTE,
    "endpoint": Dimension.ENDPOINT,
}
_SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")


def _weighted_mean(rows: list[dict], name: str) -> float | None:
    """Request-weighted mean of per-bucket percentiles: exact for one bucket, an estimate across
    several (percentiles do not merge), the same convention as the dashboards."""
    known = [(row[name], row["requests"]) for row in rows if row[name] is not None]
    if len(known) == 1:
        return known[0][0]
    weight = sum(requests for _, requests in known)
    return sum(value * requests for value, requests in known) / weight if weight else None


def usage_summarize(
    *, tenant_id: int, granularity: str, start: datetime, end: datetime, group_by: str
) -> list[dict]:
    """One tenant's usage over the buckets of [start, end), one entry per group, sorted by group."""
    rows = UsageRollup.objects.filter(
        tenant_id=tenant_id, granularity=granularity, dimension=GROUP_BY_DIMENSION[group_by],
        bucket_start__gte=start, bucket_start__lt=end,
    ).values("bucket_start", "value", *_SUMMED, "latency_p50_ms", "latency_p95_ms")
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        group = row["bucket_start"].date().isoformat() if group_by == "day" else row["value"]
        groups[group].append(row)
    summary = []
    for group, members in sorted(groups.items()):
        entry = {"group": group, **{name: sum(row[name] for row in members) for name in _SUMMED}}
        entry["latency_p50_ms"] = _weighted_mean(members, "latency_p50_ms")
        entry["latency_p95_ms"] = _weighted_mean(members, "latency_p95_ms")
        summary.append(entry)
    if group_by == "key":
        _key_labels_add(tenant_id=tenant_id, summary=summary)
    return summary


def _key_labels_add(*, tenant_id: int, summary: list[dict]) -> None:
    """Name and visible prefix of each key, so a client can tell its keys apart ("" group: records
    whose key was deleted)."""
    ids = [int(entry["group"]) for entry in summary if entry["group"]]
    keys = TenantApiKey.objects.filter(tenant_id=tenant_id, pk__in=ids).values_list("pk", "name", "prefix")
    labels = {str(pk): (name, prefix) for pk, name, prefix in keys}
    for entry in summary:
        entry["key_name"], entry["key_prefix"] = labels.get(entry["group"], (None, None))
