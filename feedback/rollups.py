"""Feedback rollups: feedback and metric values aggregated per tenant, bucket and dimension.

A row's bucket is the one holding the rated request's `created_at` (not the time of the feedback),
so feedback sits next to the UsageRollup of the same requests: their cost and latency. Dimensions:
total, model (the requested model, as in usage rollups), route (the routing rule), tag (the
request's tags, as in usage rollups), variant (`experiment/variant`) and deployment
(`route_group/provider:served_model`, for the best_rated routing strategy). Tags given in feedback
are counted per row in `feedback_tags`. A metric value given per conversation is counted with the
conversation's latest request.

Incremental, as usage rollups are (`accounting.rollups`): each Feedback and MetricValue keeps in
`rolled` what it last added to the rollups (its request's bucket and dimensions, its rating or
value). A run (`feedback_rollup_recent`, beat every minute) looks only at what changed: feedback
and values saved since the last run (re-read for `RESCAN`, for a transaction that committed late),
and the conversation values of conversations that got a new request (read by id, as the usage
rollups read records), which may move them to a later bucket. Each takes out its `rolled` part and
adds its current one: an update, or a value moved by a new request, is a difference. Every field
of a row adds up (counts, sums and sums of squares), so a run costs what changed.

`feedback_rollup_bucket` recomputes a bucket from raw rows, after catching up on the same
snapshot: the rows the incremental runs hold (tests/feedback/test_feedback_rollups.py). Deleted
feedback is not taken out (rollups keep what was counted); a recompute drops it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.db.models import Max, Q
from django.utils import timezone

from accounting.models import RollupCursor, UsageRecord
from accounting.rollups import (
    GRANULARITIES,
    SCAN_LIMIT,
    RollupReport,
    RowKey,
    bucket_checked,
    bucket_end,
    bucket_floor,
    bucket_rows_replace,
    id_scan,
    rollup_run,
)
from feedback.models import Feedback, FeedbackRollup, FeedbackRollupCursor, MetricValue

Dimension = FeedbackRollup.Dimension
CURSOR_NAME = "feedback"
CONVERSATIONS_CURSOR_NAME = "feedback-conversations"  # a RollupCursor over UsageRecord ids
LOCK_NAME = "feedback-rollup"
# Changes are read again for this long after the cursor passed them: a transaction that saved
# feedback with an earlier `updated_at` may commit after a run read past that time.
RESCAN = timedelta(minutes=5)
VALUE_MAX_LENGTH = FeedbackRollup._meta.get_field("value").max_length
_RECORD_FIELDS = (
    "id", "tenant_id", "requested_model", "route", "tags", "experiment", "variant", "route_group",
    "provider_name", "served_model", "created_at",
)
_RECORD_PREFIXED = tuple(f"usage_record__{name}" for name in _RECORD_FIELDS)
_COUNTED = ("feedback", "ratings", "rating_sum", "rating_sumsq", "thumbs_up", "thumbs_down", "corrections")


def _dimension_values(record: dict) -> Iterator[tuple[str, str]]:
    yield Dimension.TOTAL, ""
    yield Dimension.MODEL, record["requested_model"][:VALUE_MAX_LENGTH]
    if record["route"]:
        yield Dimension.ROUTE, record["route"]
    tags = record["tags"] if isinstance(record["tags"], list) else []
    for tag in sorted({tag[:VALUE_MAX_LENGTH] for tag in tags if isinstance(tag, str) and tag}):
        yield Dimension.TAG, tag
    if record["experiment"]:
        yield Dimension.VARIANT, f"{record['experiment']}/{record['variant']}"[:VALUE_MAX_LENGTH]
    if record["route_group"] and record["provider_name"]:
        yield Dimension.DEPLOYMENT, deployment_dimension_value(
            group=record["route_group"], provider=record["provider_name"], model=record["served_model"]
        )


def deployment_dimension_value(*, group: str, provider: str, model: str) -> str:
    """The `deployment` dimension's value: a route group (a slug, so no '/') and the deployment
    that served, as `provider:upstream_model`; what the best_rated strategy reads its posteriors from."""
    return f"{group}/{provider}:{model}"[:VALUE_MAX_LENGTH]


def _empty() -> dict:
    return {
        "feedback": 0, "ratings": 0, "rating_sum": 0.0, "rating_sumsq": 0.0, "thumbs_up": 0,
        "thumbs_down": 0, "corrections": 0, "metrics": {}, "feedback_tags": {},
    }


# --- the part one feedback or metric value adds ---------------------------------------------------
def _where(record: dict) -> dict:
    """Where a request's feedback counts: its bucket time, tenant and dimension values (JSON)."""
    return {"at": record["created_at"].isoformat(), "tenant": record["tenant_id"],
            "dims": [list(pair) for pair in _dimension_values(record)]}


def _feedback_part(entry: dict, record: dict) -> dict:
    tags = entry["tags"] if isinstance(entry["tags"], list) else []
    return {**_where(record), "rating": entry["rating"], "rating_value": entry["rating_value"],
            "correction": bool(entry["correction"]), "tags": [tag for tag in tags if isinstance(tag, str)]}


def _metric_part(record: dict | None, name: str, value: float) -> dict | None:
    return None if record is None else {**_where(record), "metric": name, "value": value}


def _part_add(rows: dict, part: dict | None, sign: int) -> None:
    """Add (sign 1) or take out (sign -1) one part into `rows`, keyed by (granularity, bucket,
    tenant, dimension, value). A stored metric or tag whose count reaches zero goes (`_rows_apply`),
    as a recompute never makes one."""
    if part is None:
        return
    at = datetime.fromisoformat(part["at"])
    for granularity in GRANULARITIES:
        start = bucket_floor(granularity=granularity, when=at)
        for dimension, value in part["dims"]:
            row = rows.setdefault((granularity, start, part["tenant"], dimension, value), _empty())
            if "metric" in part:
                _metric_add(row["metrics"], part["metric"], part["value"], sign)
            else:
                _feedback_add(row, part, sign)


def _feedback_add(row: dict, part: dict, sign: int) -> None:
    row["feedback"] += sign
    if part["rating_value"] is not None:
        row["ratings"] += sign
        row["rating_sum"] += sign * part["rating_value"]
        row["rating_sumsq"] += sign * part["rating_value"] ** 2
    row["thumbs_up"] += sign * (part["rating"] == 1)
    row["thumbs_down"] += sign * (part["rating"] == -1)
    row["corrections"] += sign * part["correction"]
    for tag in part["tags"]:
        count = row["feedback_tags"].get(tag, 0) + sign
        if count:
            row["feedback_tags"][tag] = count
        else:
            row["feedback_tags"].pop(tag, None)


def _metric_add(metrics: dict, name: str, value: float, sign: int) -> None:
    stats = metrics.setdefault(name, {"count": 0, "sum": 0.0, "sumsq": 0.0})
    stats["count"] += sign
    stats["sum"] += sign * value
    stats["sumsq"] += sign * value * value  # kept at count 0: a changed value's difference is in its sums


def _record_of(entry: dict) -> dict:
    return {name: entry[f"usage_record__{name}"] for name in _RECORD_FIELDS}


def _conversation_records(tenant_conversations: set[tuple[int, str]]) -> dict[tuple[int, str], dict]:
    """The latest request of each (tenant, conversation): where its conversation metrics count."""
    latest: dict[tuple[int, str], dict] = {}
    by_tenant: dict[int, set[str]] = defaultdict(set)
    for tenant_id, conversation in tenant_conversations:
        by_tenant[tenant_id].add(conversation)
    for tenant_id, conversations in by_tenant.items():
        last = (
            UsageRecord.objects.filter(tenant_id=tenant_id, conversation_id__in=conversations)
            .values("conversation_id").annotate(last=Max("created_at"))
        )
        for row in last:
            record = (
                UsageRecord.objects.filter(
                    tenant_id=tenant_id, conversation_id=row["conversation_id"], created_at=row["last"]
                ).order_by("-id").values(*_RECORD_FIELDS).first()
            )
            latest[(tenant_id, row["conversation_id"])] = record
    return latest


# --- recomputing a bucket -------------------------------------------------------------------------
def feedback_rows_compute(*, start: datetime, end: datetime) -> dict[RowKey, dict]:
    """A bucket's rows from the raw feedback and metric values, by the same additions."""
    rows: dict = {}
    in_bucket = {"usage_record__created_at__gte": start, "usage_record__created_at__lt": end}
    feedback = Feedback.objects.filter(**in_bucket).values("rating", "rating_value", "correction", "tags",
                                                            *_RECORD_PREFIXED)
    for entry in feedback.iterator(chunk_size=2_000):
        _part_add(rows, _feedback_part(entry, _record_of(entry)), 1)
    per_response = MetricValue.objects.filter(**in_bucket).values("metric__name", "value", *_RECORD_PREFIXED)
    for entry in per_response.iterator(chunk_size=2_000):
        _part_add(rows, _metric_part(_record_of(entry), entry["metric__name"], entry["value"]), 1)
    for record, name, value in _conversation_values_in(start=start, end=end):
        _part_add(rows, _metric_part(record, name, value), 1)
    step = end - start
    return {
        (tenant_id, dimension, value): row
        for (granularity, bucket, tenant_id, dimension, value), row in rows.items()
        if bucket == start and (granularity == "hour") == (step == timedelta(hours=1))
    }


def _conversation_values_in(*, start: datetime, end: datetime) -> Iterator[tuple[dict, str, float]]:
    """Conversation metric values whose conversation's latest request lies in [start, end): the
    conversations with a request in the range, not every conversation."""
    conversations = set(
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end).exclude(conversation_id="")
        .values_list("tenant_id", "conversation_id").distinct()
    )
    values = _conversation_values(conversations)
    latest = _conversation_records({(v.tenant_id, v.conversation_id) for v in values})
    for value in values:
        record = latest.get((value.tenant_id, value.conversation_id))
        if record is not None and start <= record["created_at"] < end:
            yield record, value.metric.name, value.value


def _conversation_values(conversations: set[tuple[int, str]]) -> list[MetricValue]:
    if not conversations:
        return []
    where = Q(pk__in=[])
    by_tenant: dict[int, list[str]] = defaultdict(list)
    for tenant_id, conversation in conversations:
        by_tenant[tenant_id].append(conversation)
    for tenant_id, names in by_tenant.items():
        where |= Q(tenant_id=tenant_id, conversation_id__in=names)
    return list(MetricValue.objects.filter(where, usage_record=None).select_related("metric"))


def feedback_rollup_bucket(*, granularity: str, bucket_start: datetime) -> int:
    """Recompute every feedback rollup row of one bucket, for every tenant; idempotent. Catches up
    first, on the same snapshot, so the rows are those the incremental runs hold."""
    start = bucket_checked(granularity, bucket_start)
    with rollup_run(LOCK_NAME):
        _catch_up(RollupReport(), now=timezone.now())
        rows = feedback_rows_compute(start=start, end=bucket_end(granularity=granularity, bucket_start=start))
        return bucket_rows_replace(model=FeedbackRollup, granularity=granularity, start=start, rows=rows)


# --- incremental runs -----------------------------------------------------------------------------
def _changed(rows: dict, since: datetime | None, conversations: set[tuple[int, str]]) -> int:
    """Take out the `rolled` part and add the current one of every feedback and value that
    changed since `since` or belongs to `conversations`; returns how many moved."""
    feedback = Feedback.objects.all() if since is None else Feedback.objects.filter(updated_at__gte=since)
    moved = []
    for entry in feedback.values("pk", "rolled", "rating", "rating_value", "correction", "tags", *_RECORD_PREFIXED):
        moved.append((Feedback, entry["pk"], entry["rolled"], _feedback_part(entry, _record_of(entry))))
    values = MetricValue.objects.all() if since is None else MetricValue.objects.filter(updated_at__gte=since)
    for entry in values.exclude(usage_record=None).values("pk", "rolled", "metric__name", "value", *_RECORD_PREFIXED):
        part = _metric_part(_record_of(entry), entry["metric__name"], entry["value"])
        moved.append((MetricValue, entry["pk"], entry["rolled"], part))
    by_conversation = {v.pk: v for v in values.filter(usage_record=None).select_related("metric")}
    by_conversation.update({v.pk: v for v in _conversation_values(conversations)})
    latest = _conversation_records({(v.tenant_id, v.conversation_id) for v in by_conversation.values()})
    for value in by_conversation.values():
        part = _metric_part(latest.get((value.tenant_id, value.conversation_id)), value.metric.name, value.value)
        moved.append((MetricValue, value.pk, value.rolled, part))
    changed = [(model, pk, part) for model, pk, rolled, part in moved if rolled != part]
    for model, pk, rolled, part in moved:
        if rolled != part:
            _part_add(rows, rolled, -1)
            _part_add(rows, part, 1)
    for model in (Feedback, MetricValue):
        objects = [model(pk=pk, rolled=part) for m, pk, part in changed if m is model]
        model.objects.bulk_update(objects, ["rolled"], batch_size=500)
    return len(changed)


def _rows_apply(rows: dict) -> int:
    """Add differences into the stored rows; a row left with nothing counted goes."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for granularity, start, tenant_id, dimension, value in rows:
        groups[(granularity, start, tenant_id, dimension)].append(value)
    where = Q(pk__in=[])
    for (granularity, start, tenant_id, dimension), values in groups.items():
        where |= Q(granularity=granularity, bucket_start=start, tenant_id=tenant_id, dimension=dimension,
                   value__in=values)
    existing = {(r.granularity, r.bucket_start, r.tenant_id, r.dimension, r.value): r
                for r in FeedbackRollup.objects.filter(where)} if rows else {}
    created, updated, gone = [], [], []
    for key, delta in rows.items():
        stored = existing.get(key)
        total = _empty() if stored is None else {
            **{name: getattr(stored, name) for name in _COUNTED},
            "metrics": {name: dict(stats) for name, stats in stored.metrics.items()},
            "feedback_tags": dict(stored.feedback_tags),
        }
        for name in _COUNTED:
            total[name] += delta[name]
        for name, stats in delta["metrics"].items():
            for field_name in ("count", "sum", "sumsq"):
                total["metrics"].setdefault(name, {"count": 0, "sum": 0.0, "sumsq": 0.0})[field_name] += stats[field_name]
            if total["metrics"][name]["count"] == 0:
                del total["metrics"][name]
        for tag, count in delta["feedback_tags"].items():
            total["feedback_tags"][tag] = total["feedback_tags"].get(tag, 0) + count
            if not total["feedback_tags"][tag]:
                del total["feedback_tags"][tag]
        if total["feedback"] == 0 and not total["metrics"]:
            if stored is not None:
                gone.append(stored.pk)
        elif stored is None:
            granularity, start, tenant_id, dimension, value = key
            created.append(FeedbackRollup(granularity=granularity, bucket_start=start, tenant_id=tenant_id,
                                          dimension=dimension, value=value, **total))
        else:
            for name, value in total.items():
                setattr(stored, name, value)
            updated.append(stored)
    FeedbackRollup.objects.filter(pk__in=gone).delete()
    FeedbackRollup.objects.bulk_create(created, batch_size=500)
    FeedbackRollup.objects.bulk_update(updated, [*_COUNTED, "metrics", "feedback_tags"], batch_size=500)
    return len(created) + len(updated)


def _catch_up(report: RollupReport, *, now: datetime) -> None:
    cursor, _ = FeedbackRollupCursor.objects.select_for_update().get_or_create(name=CURSOR_NAME)
    records, _ = RollupCursor.objects.select_for_update().get_or_create(name=CONVERSATIONS_CURSOR_NAME)
    since = cursor.last_seen - RESCAN if cursor.last_seen else None
    newest = max(
        (t for t in (Feedback.objects.aggregate(m=Max("updated_at"))["m"],
                     MetricValue.objects.aggregate(m=Max("updated_at"))["m"]) if t),
        default=None,
    )
    conversations: set[tuple[int, str]] = set()

    def consume(record: dict) -> None:
        if record["conversation_id"]:
            conversations.add((record["tenant_id"], record["conversation_id"]))

    report.records_read += id_scan(records, UsageRecord.objects.all(), ("tenant_id", "conversation_id"),
                                   now=now, limit=SCAN_LIMIT, consume=consume)
    rows: dict = {}
    report.changes_applied += _changed(rows, since, conversations)
    report.rows_written += _rows_apply(rows)
    report.buckets |= {(granularity, start) for granularity, start, *_ in rows}
    if newest is not None and (cursor.last_seen is None or newest > cursor.last_seen):
        cursor.last_seen = newest
    cursor.save()
    records.save()


def feedback_rollup_recent(*, now: datetime | None = None) -> RollupReport:
    """Add what changed since the last run into the feedback rollups (beat, every minute)."""
    started = time.monotonic()
    report = RollupReport()
    with rollup_run(LOCK_NAME):
        _catch_up(report, now=now or timezone.now())
    report.seconds = time.monotonic() - started
    return report
