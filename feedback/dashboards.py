"""Reads for the feedback dashboards: rating and metrics over time, breakdowns next to cost and
latency, the worst-rated responses, and corrections as fine-tuning data.

`tenant=None` means every tenant (the operator's view). Time series and breakdowns read the
rollups (`FeedbackRollup` beside `UsageRollup` of the same dimension); the worst-rated list and
the corrections export read raw feedback, bounded by the window and a row limit.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Sum

from accounting.dashboards import Window
from accounting.models import Tenant, UsageContent, UsageRollup
from accounting.sketches import sketch_merge, sketch_quantiles
from feedback.models import Feedback, FeedbackRollup

WORST_LIMIT = 20
EXPORT_LIMIT = 50_000


def _rollups(*, window: Window, dimension: str, tenant: Tenant | None):
    rows = FeedbackRollup.objects.filter(
        granularity=window.granularity, dimension=dimension, bucket_start__gte=window.start,
        bucket_start__lt=window.end,
    )
    return rows if tenant is None else rows.filter(tenant=tenant)


def rating_series(*, window: Window, dimension: str, tenant: Tenant | None = None, top: int = 6
                  ) -> dict[str, list[float | None]]:
    """Mean rating (0..1) per bucket for the `top` most-rated values of a dimension."""
    sums: dict[str, dict] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    totals: dict[str, int] = defaultdict(int)
    for row in _rollups(window=window, dimension=dimension, tenant=tenant).values(
        "value", "bucket_start", "rating_sum", "ratings"
    ):
        label = row["value"] or "all"
        cell = sums[label][row["bucket_start"]]
        cell[0] += row["rating_sum"]
        cell[1] += row["ratings"]
        totals[label] += row["ratings"]
    chosen = sorted((label for label in totals if totals[label]), key=lambda label: (-totals[label], label))[:top]
    return {
        label: [
            sums[label][bucket][0] / sums[label][bucket][1] if sums[label][bucket][1] else None
            for bucket in window.buckets
        ]
        for label in chosen
    }


def metric_series(*, window: Window, tenant: Tenant | None = None) -> dict[str, list[float | None]]:
    """Mean of each named metric per bucket (all of the tenant's traffic)."""
    sums: dict[str, dict] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for row in _rollups(window=window, dimension=FeedbackRollup.Dimension.TOTAL, tenant=tenant).values(
        "bucket_start", "metrics"
    ):
        for name, stats in (row["metrics"] or {}).items():
            cell = sums[name][row["bucket_start"]]
            cell[0] += stats["sum"]
            cell[1] += stats["count"]
    return {
        name: [cells[b][0] / cells[b][1] if cells[b][1] else None for b in window.buckets]
        for name, cells in sorted(sums.items())
    }


@dataclass
class BreakdownRow:
    value: str
    feedback: int
    ratings: int
    mean_rating: float | None
    thumbs_up: int
    thumbs_down: int
    corrections: int
    metrics: dict[str, float]
    requests: int
    cost_usd: Decimal
    cost_per_request: Decimal | None
    latency_p50_ms: float | None


def breakdown(*, window: Window, dimension: str, tenant: Tenant | None = None) -> list[BreakdownRow]:
    """Feedback per value of a dimension, with the cost and latency of the same requests."""
    merged: dict[str, dict] = {}
    for row in _rollups(window=window, dimension=dimension, tenant=tenant).values():
        entry = merged.setdefault(row["value"], {
            "feedback": 0, "ratings": 0, "rating_sum": 0.0, "thumbs_up": 0, "thumbs_down": 0, "corrections": 0,
            "metrics": defaultdict(lambda: [0.0, 0]),
        })
        for name in ("feedback", "ratings", "rating_sum", "thumbs_up", "thumbs_down", "corrections"):
            entry[name] += row[name]
        for name, stats in (row["metrics"] or {}).items():
            entry["metrics"][name][0] += stats["sum"]
            entry["metrics"][name][1] += stats["count"]
    usage = UsageRollup.objects.filter(
        granularity=window.granularity, dimension=dimension, bucket_start__gte=window.start,
        bucket_start__lt=window.end, value__in=list(merged),
    )
    if tenant is not None:
        usage = usage.filter(tenant=tenant)
    costs = {row["value"]: row for row in usage.values("value").annotate(requests=Sum("requests"), cost=Sum("cost_usd"))}
    sketches: dict[str, list[dict]] = defaultdict(list)
    for row in usage.values("value", "latency_sketch"):
        sketches[row["value"]].append(row["latency_sketch"])
    rows = []
    for value, entry in merged.items():
        spend = costs.get(value, {})
        requests, cost = spend.get("requests") or 0, spend.get("cost") or Decimal("0")
        rows.append(BreakdownRow(
            value=value or "all",
            feedback=entry["feedback"],
            ratings=entry["ratings"],
            mean_rating=entry["rating_sum"] / entry["ratings"] if entry["ratings"] else None,
            thumbs_up=entry["thumbs_up"],
            thumbs_down=entry["thumbs_down"],
            corrections=entry["corrections"],
            metrics={name: s / n for name, (s, n) in sorted(entry["metrics"].items()) if n},
            requests=requests,
            cost_usd=cost,
            cost_per_request=cost / requests if requests else None,
            latency_p50_ms=sketch_quantiles(sketch_merge(sketches[value]))["p50"],
        ))
    return sorted(rows, key=lambda row: (-row.ratings, row.value))


@dataclass
class TagRow:
    tag: str
    feedback: int  # feedback that carried the tag
    share: float  # of all feedback in the window


def feedback_tags(*, window: Window, tenant: Tenant | None = None) -> list[TagRow]:
    """The tags sent with feedback (`Feedback.tags`), most used first, from the total rollups."""
    counts: dict[str, int] = defaultdict(int)
    total = 0
    for row in _rollups(window=window, dimension=FeedbackRollup.Dimension.TOTAL, tenant=tenant).values(
        "feedback", "feedback_tags"
    ):
        total += row["feedback"]
        for tag, count in (row["feedback_tags"] or {}).items():
            counts[tag] += count
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [TagRow(tag=tag, feedback=count, share=count / total if total else 0.0) for tag, count in ranked]


def tenant_breakdown(*, window: Window) -> list[tuple[Tenant, BreakdownRow]]:
    """The operator's comparison: one total row per tenant."""
    rows = []
    for tenant in Tenant.objects.filter(feedback_rollups__isnull=False).distinct().order_by("slug"):
        for row in breakdown(window=window, dimension=FeedbackRollup.Dimension.TOTAL, tenant=tenant):
            rows.append((tenant, row))
    return rows


@dataclass
class RatedResponse:
    feedback: Feedback
    tenant_slug: str
    model: str
    route: str
    prompt: list | None  # shown only where the tenant keeps content
    answer: str | None


def worst_rated(*, window: Window, tenant: Tenant | None = None, limit: int = WORST_LIMIT) -> list[RatedResponse]:
    """The lowest-rated responses of the window (most recent first among equals)."""
    rows = Feedback.objects.filter(
        rating_value__isnull=False, usage_record__created_at__gte=window.start,
        usage_record__created_at__lt=window.end,
    ).select_related("usage_record", "tenant").order_by("rating_value", "-updated_at")
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    rows = list(rows[:limit])
    kept = {
        content.usage_record_id: content
        for content in UsageContent.objects.filter(
            usage_record_id__in=[f.usage_record_id for f in rows if f.tenant.keep_content]
        )
    }
    return [
        RatedResponse(
            feedback=f, tenant_slug=f.tenant.slug, model=f.usage_record.requested_model, route=f.usage_record.route,
            prompt=kept[f.usage_record_id].messages if f.usage_record_id in kept else None,
            answer=kept[f.usage_record_id].completion if f.usage_record_id in kept else None,
        )
        for f in rows
    ]


def corrections_jsonl(*, window: Window, tenant: Tenant | None = None) -> Iterator[str]:
    """Corrections as chat fine-tuning examples, one JSON object per line:

        {"messages": [...the request's messages..., {"role": "assistant", "content": correction}]}

    Only for responses whose prompt was kept (tenants with `keep_content`): without the prompt a
    correction is no training example.
    """
    rows = Feedback.objects.filter(
        usage_record__created_at__gte=window.start, usage_record__created_at__lt=window.end,
        usage_record__content__isnull=False,
    ).exclude(correction="").select_related("usage_record__content").order_by("usage_record__created_at", "pk")
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    for feedback in rows[:EXPORT_LIMIT].iterator(chunk_size=500):
        messages = [
            {"role": m.get("role"), "content": m.get("content")}
            for m in feedback.usage_record.content.messages
            if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
        ]
        if not messages:
            continue
        messages.append({"role": "assistant", "content": feedback.correction})
        yield json.dumps({"messages": messages}, ensure_ascii=False) + "\n"
