"""Usage rollups: UsageRecords aggregated per tenant, hour or day, and dimension, incrementally.

Each run (`rollup_recent`, beat every minute; `manage.py run_rollups`) reads only what was written
since the last one and adds it into the rows of its buckets:

- records with an id above the cursor's, and those found in its id gaps (`RollupCursor`): an id
  is taken at insert and visible at commit, so a smaller id can appear after a larger one was
  read (a slow transaction, a record replayed from the journal however old its `created_at`);
- corrections (`UsageRecordChange`, written by `accounting.services.usage_record_correct` with
  the record's values before and after), applied as differences: the before values taken out,
  the after values added, for a record the rollups had counted already.

Everything in a row adds up: requests, errors (by class), tokens, cost, cache hits and savings,
and the latency and time-to-first-token sketches (`accounting.sketches`: bin counts, from which
p50, p95 and p99 are read). So a run costs what it reads, not the size of the buckets it touches.

A run holds one lock (a PostgreSQL session advisory lock; SQLite serializes writers) and reads
on one snapshot (REPEATABLE READ when it opens the transaction), so a correction and the record
it changed are seen together or not at all, and the cursors advance with the rows they stand for.

Recomputing a bucket from raw records stays (`rollup_bucket`, `rollup_bucket_task`,
`manage.py run_rollups --recompute FROM TO`): under the same lock, it first catches up, then
rebuilds the bucket from the records the cursor has counted, which is what the incremental rows
hold; the same function adds both, so the two agree exactly (tests/accounting/test_rollups.py).
Records deleted later (retention) are not taken out of rollups: they stay, and a recompute is for
buckets whose records are still kept.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounting.models import RollupCursor, TenantApiKey, UsageRecord, UsageRecordChange, UsageRollup
from accounting.sketches import sketch_add, sketch_key, sketch_merge, sketch_quantiles

Granularity = UsageRollup.Granularity
Dimension = UsageRollup.Dimension
STEPS = {Granularity.HOUR: timedelta(hours=1), Granularity.DAY: timedelta(days=1)}
GRANULARITIES = (Granularity.HOUR, Granularity.DAY)
RowKey = tuple[int, str, str]  # (tenant_id, dimension, value)
BucketRowKey = tuple[str, datetime, int, str, str]  # (granularity, bucket_start, tenant_id, dimension, value)

VALUE_MAX_LENGTH = UsageRollup._meta.get_field("value").max_length
UNKNOWN_ERROR_CLASS = "unknown"
CURSOR_NAME = "usage"
CHANGES_CURSOR_NAME = "usage-changes"
LOCK_NAME = "usage-rollup"
# Records read per transaction of a run; a run goes on with the next batch while a batch was full,
# up to MAX_BATCHES, so a backlog is caught up over a few runs and each commit stays small.
SCAN_LIMIT = 50_000
MAX_BATCHES = 20
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


# --- one run at a time, on one snapshot ------------------------------------------------------------
@contextmanager
def rollup_run(name: str) -> Iterator[None]:
    """One transaction of a rollup, alone among the runs of `name`, on one snapshot.

    On PostgreSQL a session advisory lock, taken before the transaction opens so that its
    snapshot is taken after the previous run committed; the transaction is REPEATABLE READ when
    it is the outermost one (inside a caller's transaction, the caller's isolation holds). SQLite
    opens transactions IMMEDIATE (settings): one writer at a time, which sees every commit.
    """
    if connection.vendor != "postgresql":
        with transaction.atomic():
            yield
        return
    lock_id = zlib.crc32(name.encode())
    outermost = not connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [lock_id])
    try:
        with transaction.atomic():
            if outermost:
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_id])


# --- reading by id, with gaps ----------------------------------------------------------------------
def _id_gaps(first: int, last: int, ids: list[int]) -> list[tuple[int, int]]:
    """The ranges of [first, last] not in `ids` (sorted, all within [first, last])."""
    gaps, expected = [], first
    for record_id in ids:
        if record_id > expected:
            gaps.append((expected, record_id - 1))
        expected = record_id + 1
    if expected <= last:
        gaps.append((expected, last))
    return gaps


def _gaps_q(gaps: list[list]) -> Q:
    where = Q(pk__in=[])
    for first, last, _seen in gaps:
        where |= Q(id__range=(first, last))
    return where


def id_scan(cursor: RollupCursor, queryset, fields: tuple[str, ...], *, now: datetime, limit: int,
            consume: Callable[[dict], None]) -> int:
    """Hand `consume` every row of `queryset` the cursor has not seen (ids above it, up to `limit`,
    and ids in its gaps) and advance the cursor (not saved); returns the number of rows.

    Ids skipped by a scan are kept as gaps and looked at again on each run, until `GAP_TTL` has
    passed (ids of rolled-back inserts never appear).
    """
    found: list[int] = []
    if cursor.pending_gaps:
        for row in queryset.filter(_gaps_q(cursor.pending_gaps)).order_by("id").values("id", *fields):
            found.append(row["id"])
            consume(row)
    gaps = []
    for first, last, seen in cursor.pending_gaps:
        if now.timestamp() - seen < GAP_TTL.total_seconds():
            inside = [record_id for record_id in found if first <= record_id <= last]
            gaps += [[a, b, seen] for a, b in _id_gaps(first, last, inside)]
    new: list[int] = []
    rows = queryset.filter(id__gt=cursor.last_record_id).order_by("id").values("id", *fields)[:limit]
    for row in rows.iterator(chunk_size=5_000):
        new.append(row["id"])
        consume(row)
    if new:
        gaps += [[a, b, now.timestamp()] for a, b in _id_gaps(cursor.last_record_id + 1, new[-1], new)]
        cursor.last_record_id = new[-1]
    cursor.pending_gaps = gaps[-MAX_GAPS:]
    return len(found) + len(new)


def id_counted(cursor: RollupCursor) -> Q:
    """The rows a cursor has read: ids up to its last one, outside its gaps."""
    where = Q(id__lte=cursor.last_record_id)
    return where & ~_gaps_q(cursor.pending_gaps) if cursor.pending_gaps else where


# --- what one record adds to its rows -------------------------------------------------------------
RECORD_FIELDS = (
    "created_at", "tenant_id", "api_key_id", "requested_model", "task", "tags", "end_user", "route", "status",
    "error_class", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms",
    "cache", "saved_cost_usd", "endpoint",
)
CACHE_HITS = ("hit", "semantic")  # UsageRecord.cache values of an answer served from the cache
_ADDED = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd", "cache_hits", "saved_cost_usd")
_BINS = ("errors_by_class", "latency_sketch", "ttft_sketch")


def _tags(tags) -> set[str]:
    """Distinct non-empty string tags; anything else in the JSON is ignored."""
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


def row_empty() -> dict:
    return {
        "requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": Decimal("0"),
        "cache_hits": 0, "saved_cost_usd": Decimal("0"), "errors_by_class": {}, "latency_sketch": {},
        "ttft_sketch": {},
    }


def row_add(row: dict, part: dict, sign: int = 1) -> None:
    for name in _ADDED:
        row[name] += sign * part[name]
    for name in _BINS:
        sketch_add(row[name], part[name], sign)


_SKETCH_KEYS: dict[int, str] = {}  # latency (whole ms) -> its sketch bin: values repeat


def _bin(value: int) -> str:
    key = _SKETCH_KEYS.get(value)
    if key is None:
        if len(_SKETCH_KEYS) > 200_000:
            _SKETCH_KEYS.clear()
        key = _SKETCH_KEYS[value] = sketch_key(value)
    return key


def record_add(rows: dict, record: dict, *, sign: int = 1, granularities=(Granularity.HOUR,)) -> None:
    """Add one record (sign 1) or take it out (sign -1) of `rows`, keyed by `BucketRowKey`; the
    hour rows by default (`days_add` adds them into their days). The loop every record of a run
    goes through: written for speed, plain dictionaries and no call per field."""
    hour = record["created_at"].astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)
    error = record["status"] == UsageRecord.Status.ERROR
    error_class = (record["error_class"] or UNKNOWN_ERROR_CLASS) if error else ""
    prompt, completion = sign * record["prompt_tokens"], sign * record["completion_tokens"]
    cost = record["cost_usd"] if sign > 0 else -record["cost_usd"]
    saved = record["saved_cost_usd"] if sign > 0 else -record["saved_cost_usd"]
    hit = record["cache"] in CACHE_HITS
    latency = _bin(record["latency_ms"])
    ttft = None if record["ttft_ms"] is None else _bin(record["ttft_ms"])
    tenant_id = record["tenant_id"]
    dimensions = list(_dimension_values(record))
    for granularity in granularities:
        start = hour if granularity == Granularity.HOUR else hour.replace(hour=0)
        for dimension, value in dimensions:
            key = (granularity, start, tenant_id, dimension, value)
            row = rows.get(key)
            if row is None:
                row = rows[key] = row_empty()
            row["requests"] += sign
            if error:
                row["errors"] += sign
                classes = row["errors_by_class"]
                classes[error_class] = classes.get(error_class, 0) + sign
            row["prompt_tokens"] += prompt
            row["completion_tokens"] += completion
            row["cost_usd"] += cost
            if hit:
                row["cache_hits"] += sign
            row["saved_cost_usd"] += saved
            bins = row["latency_sketch"]
            bins[latency] = bins.get(latency, 0) + sign
            if ttft is not None:
                bins = row["ttft_sketch"]
                bins[ttft] = bins.get(ttft, 0) + sign


def days_add(rows: dict) -> None:
    """Add the hour rows of `rows` into their day rows (fewer rows than records: cheaper than
    adding each record twice)."""
    for (granularity, start, tenant_id, dimension, value), row in list(rows.items()):
        if granularity == Granularity.HOUR:
            key = (Granularity.DAY, start.replace(hour=0), tenant_id, dimension, value)
            day = rows.get(key)
            if day is None:
                day = rows[key] = row_empty()
            row_add(day, row)


def row_fields(row: dict) -> dict:
    """The model fields of an added-up row, percentiles read from its sketches."""
    fields = {name: row[name] for name in _ADDED}
    fields["errors_by_class"] = dict(sorted((name, n) for name, n in row["errors_by_class"].items() if n))
    for prefix in ("latency", "ttft"):
        bins = dict(sorted((key, n) for key, n in row[f"{prefix}_sketch"].items() if n))
        fields[f"{prefix}_sketch"] = bins
        for name, value in sketch_quantiles(bins).items():
            fields[f"{prefix}_{name}_ms"] = value
    return fields


# --- incremental runs -----------------------------------------------------------------------------
@dataclass
class RollupReport:
    """What runs did: for `manage.py run_rollups` and the benchmark."""

    records_read: int = 0
    changes_applied: int = 0
    rows_written: int = 0
    buckets: set = field(default_factory=set)
    seconds: float = 0.0

    def add(self, other: RollupReport) -> None:
        self.records_read += other.records_read
        self.changes_applied += other.changes_applied
        self.rows_written += other.rows_written
        self.buckets |= other.buckets
        self.seconds += other.seconds


def _snapshot(record: dict) -> dict:
    """A record's rollup fields as JSON (a correction's before and after)."""
    return {name: (record[name].isoformat() if isinstance(record[name], datetime)
                   else str(record[name]) if isinstance(record[name], Decimal) else record[name])
            for name in RECORD_FIELDS}


def _from_snapshot(values: dict) -> dict:
    record = dict(values)
    record["created_at"] = datetime.fromisoformat(values["created_at"])
    record["cost_usd"], record["saved_cost_usd"] = Decimal(values["cost_usd"]), Decimal(values["saved_cost_usd"])
    return record


def record_snapshot(record: UsageRecord) -> dict:
    return _snapshot({name: getattr(record, name) for name in RECORD_FIELDS})


def _changes_apply(rows: dict, records: RollupCursor, *, now: datetime) -> int:
    """Corrections not seen yet, as differences on the records already counted: a record not
    counted yet is read later with its corrected values (same snapshot)."""
    cursor, _ = RollupCursor.objects.select_for_update().get_or_create(name=CHANGES_CURSOR_NAME)
    counted_until, gaps = records.last_record_id, records.pending_gaps
    applied = 0

    def consume(change: dict) -> None:
        nonlocal applied
        record_id = change["record_id"]
        if record_id > counted_until or any(first <= record_id <= last for first, last, _ in gaps):
            return
        record_add(rows, _from_snapshot(change["before"]), sign=-1)
        record_add(rows, _from_snapshot(change["after"]))
        applied += 1

    id_scan(cursor, UsageRecordChange.objects.all(), ("record_id", "before", "after"),
            now=now, limit=SCAN_LIMIT, consume=consume)
    cursor.save()
    return applied


def rows_apply(rows: dict[BucketRowKey, dict]) -> int:
    """Add differences (`BucketRowKey` -> added-up row) into the stored rows: read the rows they
    touch, add, write; a row left without requests goes. Returns the rows written."""
    existing = {
        (row.granularity, row.bucket_start, row.tenant_id, row.dimension, row.value): row
        for row in _rows_touched(rows)
    }
    created, updated, gone = [], [], []
    now = timezone.now()
    for key, delta in rows.items():
        stored = existing.get(key)
        total = row_empty() if stored is None else {name: getattr(stored, name) for name in (*_ADDED, *_BINS)}
        total = {**total, **{name: dict(total[name]) for name in _BINS}}
        row_add(total, delta)
        if total["requests"] == 0:
            if stored is not None:
                gone.append(stored.pk)
            continue
        fields = row_fields(total)
        if stored is None:
            granularity, start, tenant_id, dimension, value = key
            created.append(UsageRollup(granularity=granularity, bucket_start=start, tenant_id=tenant_id,
                                       dimension=dimension, value=value, computed_at=now, **fields))
        else:
            for name, value in fields.items():
                setattr(stored, name, value)
            stored.computed_at = now
            updated.append(stored)
    if gone:
        UsageRollup.objects.filter(pk__in=gone).delete()
    UsageRollup.objects.bulk_create(created, batch_size=500)
    UsageRollup.objects.bulk_update(updated, [*_UPDATED], batch_size=500)
    return len(created) + len(updated)


_UPDATED = (
    *_ADDED, *_BINS, "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p95_ms",
    "ttft_p99_ms", "computed_at",
)


def _rows_touched(rows: dict[BucketRowKey, dict]) -> list[UsageRollup]:
    """The stored rows of the keys, one query per few hundred (bucket, tenant, dimension)."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for granularity, start, tenant_id, dimension, value in rows:
        groups[(granularity, start, tenant_id, dimension)].append(value)
    found, items = [], list(groups.items())
    for offset in range(0, len(items), 200):
        where = Q(pk__in=[])
        for (granularity, start, tenant_id, dimension), values in items[offset:offset + 200]:
            where |= Q(granularity=granularity, bucket_start=start, tenant_id=tenant_id,
                       dimension=dimension, value__in=values)
        found += list(UsageRollup.objects.filter(where))
    return found


def _catch_up(report: RollupReport, *, now: datetime) -> RollupCursor:
    """Inside a run's transaction: corrections, then records not seen yet, added into their rows."""
    cursor, _ = RollupCursor.objects.select_for_update().get_or_create(name=CURSOR_NAME)
    rows: dict[BucketRowKey, dict] = {}
    report.changes_applied += _changes_apply(rows, cursor, now=now)
    report.records_read += id_scan(
        cursor, UsageRecord.objects.all(), RECORD_FIELDS, now=now, limit=SCAN_LIMIT,
        consume=lambda record: record_add(rows, record),
    )
    days_add(rows)
    report.rows_written += rows_apply(rows)
    report.buckets |= {(granularity, start) for granularity, start, *_ in rows}
    cursor.save()
    return cursor


def _batch(*, now: datetime) -> RollupReport:
    started = time.monotonic()
    report = RollupReport()
    with rollup_run(LOCK_NAME):
        _catch_up(report, now=now)
    report.seconds = time.monotonic() - started
    return report


def rollup_recent(*, now: datetime | None = None) -> RollupReport:
    """Add what was written since the last run into the rollups (beat, every minute); batches of
    `SCAN_LIMIT` records, each its own transaction, until caught up or `MAX_BATCHES`."""
    report = RollupReport()
    for _ in range(MAX_BATCHES):
        batch = _batch(now=now or timezone.now())
        report.add(batch)
        if batch.records_read < SCAN_LIMIT:
            break
    return report


# --- recomputing a bucket from raw records ----------------------------------------------------------
def rollup_rows_compute(*, granularity: str, start: datetime, counted: Q) -> dict[RowKey, dict]:
    """A bucket's rows from the raw records in it that match `counted`, by the same additions."""
    end = bucket_end(granularity=granularity, bucket_start=start)
    rows: dict[BucketRowKey, dict] = {}
    records = UsageRecord.objects.filter(counted, created_at__gte=start, created_at__lt=end).values(*RECORD_FIELDS)
    for record in records.iterator(chunk_size=5_000):
        record_add(rows, record, granularities=(granularity,))
    return {(tenant_id, dimension, value): row_fields(row) for (_, _, tenant_id, dimension, value), row in rows.items()}


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


def rollup_bucket(*, granularity: str, bucket_start: datetime) -> int:
    """Recompute every rollup row of one bucket, for every tenant, from raw records; returns the
    number of rows. Catches up first, in the same transaction, then counts the records the cursor
    has counted: the rows the incremental runs would hold. Idempotent."""
    start = bucket_checked(granularity, bucket_start)
    rollup_recent()  # the backlog, in batches; what came since is caught up below, on the same snapshot
    with rollup_run(LOCK_NAME):
        cursor = _catch_up(RollupReport(), now=timezone.now())
        rows = rollup_rows_compute(granularity=granularity, start=start, counted=id_counted(cursor))
        return bucket_rows_replace(model=UsageRollup, granularity=granularity, start=start, rows=rows)


def rollup_recompute(*, start: datetime, end: datetime) -> RollupReport:
    """Recompute every hour and day bucket that overlaps [start, end) (`run_rollups --recompute`)."""
    started = time.monotonic()
    report = RollupReport()
    for granularity in GRANULARITIES:
        bucket = bucket_floor(granularity=granularity, when=start)
        while bucket < end:
            report.rows_written += rollup_bucket(granularity=granularity, bucket_start=bucket)
            report.buckets.add((granularity, bucket))
            bucket += STEPS[granularity]
    report.seconds = time.monotonic() - started
    return report


# --- reading (the /v1/usage API) ----------------------------------------------------------------------
GROUP_BY_DIMENSION = {
    "model": Dimension.MODEL, "key": Dimension.API_KEY, "day": Dimension.TOTAL, "route": Dimension.ROUTE,
    "endpoint": Dimension.ENDPOINT,
}
_SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")


def usage_summarize(
    *, tenant_id: int, granularity: str, start: datetime, end: datetime, group_by: str
) -> list[dict]:
    """One tenant's usage over the buckets of [start, end), one entry per group, sorted by group;
    percentiles from the group's sketches merged (within 1 % of the exact value, any range)."""
    rows = UsageRollup.objects.filter(
        tenant_id=tenant_id, granularity=granularity, dimension=GROUP_BY_DIMENSION[group_by],
        bucket_start__gte=start, bucket_start__lt=end,
    ).values("bucket_start", "value", *_SUMMED, "latency_sketch")
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        group = row["bucket_start"].date().isoformat() if group_by == "day" else row["value"]
        groups[group].append(row)
    summary = []
    for group, members in sorted(groups.items()):
        entry = {"group": group, **{name: sum(row[name] for row in members) for name in _SUMMED}}
        latency = sketch_quantiles(sketch_merge(row["latency_sketch"] for row in members))
        entry["latency_p50_ms"], entry["latency_p95_ms"] = latency["p50"], latency["p95"]
        entry["latency_p99_ms"] = latency["p99"]
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
