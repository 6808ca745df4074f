"""Feedback rollups: feedback and metric values aggregated per tenant, bucket and dimension.

A row's bucket is the one holding the rated request's `created_at` (not the time of the feedback),
so feedback sits next to the UsageRollup of the same requests: their cost and latency. Dimensions:
total, model (the requested model, as in usage rollups), route (the routing rule), tag (the
request's tags, as in usage rollups), variant (`experiment/variant`) and deployment
(`route_group/provider:served_model`, for the best_rated routing strategy). Tags given in feedback
are counted per row in `feedback_tags`.

A metric value given per conversation is counted with the conversation's latest request.

As with usage rollups, a bucket is always recomputed whole from the raw rows, so a rerun, a late
rating or an update of an earlier rating converges on the same rows. `feedback_rollup_recent`
(beat, every minute) recomputes the current and previous hour and day and the buckets of every
request whose feedback changed since its last run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from accounting.models import UsageRecord
from accounting.rollups import (
    STEPS,
    Granularity,
    RowKey,
    bucket_checked,
    bucket_end,
    bucket_floor,
    bucket_lock,
    bucket_rows_replace,
)
from feedback.models import Feedback, FeedbackRollup, FeedbackRollupCursor, MetricValue

Dimension = FeedbackRollup.Dimension
CURSOR_NAME = "feedback"
# Changes are read again for this long after the cursor passed them: a transaction that saved
# feedback with an earlier `updated_at` may commit after a run read past that time.
RESCAN = timedelta(minutes=5)
VALUE_MAX_LENGTH = FeedbackRollup._meta.get_field("value").max_length
_RECORD_FIELDS = (
    "id", "tenant_id", "requested_model", "route", "tags", "experiment", "variant", "route_group",
    "provider_name", "served_model",
)


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
                ).order_by("-id").values(*_RECORD_FIELDS, "created_at").first()
            )
            latest[(tenant_id, row["conversation_id"])] = record
    return latest


def feedback_rows_compute(*, start: datetime, end: datetime) -> dict[RowKey, dict]:
    rows: dict[RowKey, dict] = defaultdict(_empty)
    prefixed = tuple(f"usage_record__{name}" for name in _RECORD_FIELDS)
    feedback = Feedback.objects.filter(
        usage_record__created_at__gte=start, usage_record__created_at__lt=end
    ).values("rating", "rating_value", "correction", "tags", *prefixed)
    for entry in feedback.iterator(chunk_size=2_000):
        record = {name: entry[f"usage_record__{name}"] for name in _RECORD_FIELDS}
        for dimension, value in _dimension_values(record):
            row = rows[(record["tenant_id"], dimension, value)]
            row["feedback"] += 1
            if entry["rating_value"] is not None:
                row["ratings"] += 1
                row["rating_sum"] += entry["rating_value"]
                row["rating_sumsq"] += entry["rating_value"] ** 2
            row["thumbs_up"] += entry["rating"] == 1
            row["thumbs_down"] += entry["rating"] == -1
            row["corrections"] += bool(entry["correction"])
            for tag in entry["tags"] if isinstance(entry["tags"], list) else ():
                row["feedback_tags"][tag] = row["feedback_tags"].get(tag, 0) + 1
    for record, name, value in _metric_values(start=start, end=end):
        for dimension, dimension_value in _dimension_values(record):
            stats = rows[(record["tenant_id"], dimension, dimension_value)]["metrics"].setdefault(
                name, {"count": 0, "sum": 0.0, "sumsq": 0.0}
            )
            stats["count"] += 1
            stats["sum"] += value
            stats["sumsq"] += value * value
    return dict(rows)


def _metric_values(*, start: datetime, end: datetime) -> Iterator[tuple[dict, str, float]]:
    prefixed = tuple(f"usage_record__{name}" for name in _RECORD_FIELDS)
    per_response = MetricValue.objects.filter(
        usage_record__created_at__gte=start, usage_record__created_at__lt=end
    ).values("metric__name", "value", *prefixed)
    for entry in per_response.iterator(chunk_size=2_000):
        yield {name: entry[f"usage_record__{name}"] for name in _RECORD_FIELDS}, entry["metric__name"], entry["value"]
    per_conversation = list(
        MetricValue.objects.filter(usage_record=None).values("tenant_id", "conversation_id", "metric__name", "value")
    )
    latest = _conversation_records({(v["tenant_id"], v["conversation_id"]) for v in per_conversation})
    for entry in per_conversation:
        record = latest.get((entry["tenant_id"], entry["conversation_id"]))
        if record is not None and start <= record["created_at"] < end:
            yield record, entry["metric__name"], entry["value"]


@transaction.atomic
def feedback_rollup_bucket(*, granularity: str, bucket_start: datetime) -> int:
    """Recompute every feedback rollup row of one bucket, for every tenant; idempotent."""
    start = bucket_checked(granularity, bucket_start)
    bucket_lock("feedback-rollup", granularity, start)
    rows = feedback_rows_compute(start=start, end=bucket_end(granularity=granularity, bucket_start=start))
    return bucket_rows_replace(model=FeedbackRollup, granularity=granularity, start=start, rows=rows)


def _changed_request_times(since: datetime | None) -> tuple[list[datetime], datetime | None]:
    """`created_at` of requests whose feedback changed since `since`, and the newest change seen."""
    feedback = Feedback.objects.all() if since is None else Feedback.objects.filter(updated_at__gte=since)
    values = MetricValue.objects.all() if since is None else MetricValue.objects.filter(updated_at__gte=since)
    times = list(feedback.values_list("usage_record__created_at", flat=True))
    times += [t for t in values.exclude(usage_record=None).values_list("usage_record__created_at", flat=True)]
    conversations = set(values.filter(usage_record=None).values_list("tenant_id", "conversation_id"))
    times += [record["created_at"] for record in _conversation_records(conversations).values() if record]
    newest = max(
        (t for t in (feedback.aggregate(m=Max("updated_at"))["m"], values.aggregate(m=Max("updated_at"))["m"]) if t),
        default=None,
    )
    return times, newest


@transaction.atomic
def feedback_rollup_recent(*, now: datetime | None = None) -> int:
    """Recompute the current and previous hour and day and every bucket whose feedback changed."""
    now = now or timezone.now()
    cursor, _ = FeedbackRollupCursor.objects.select_for_update().get_or_create(name=CURSOR_NAME)
    since = cursor.last_seen - RESCAN if cursor.last_seen else None
    times, newest = _changed_request_times(since)
    this_hour = bucket_floor(granularity=Granularity.HOUR, when=now)
    hours = {this_hour, this_hour - STEPS[Granularity.HOUR]}
    hours |= {bucket_floor(granularity=Granularity.HOUR, when=t) for t in times}
    days = {bucket_floor(granularity=Granularity.DAY, when=hour) for hour in hours}
    written = sum(feedback_rollup_bucket(granularity=Granularity.HOUR, bucket_start=h) for h in sorted(hours))
    written += sum(feedback_rollup_bucket(granularity=Granularity.DAY, bucket_start=d) for d in sorted(days))
    if newest is not None and (cursor.last_seen is None or newest > cursor.last_seen):
        cursor.last_seen = newest
    cursor.save()
    return written
