"""Reads of the request log explorer: a page of records (keyset-paginated, newest first), the
CSV export's chunks, and one request's detail with what other apps hold about it.

A page is `created_at, id` below (or above) a cursor, `PAGE_SIZE + 1` rows read to know whether
another page follows: no OFFSET and no count, so the thousandth page costs what the first does.
The index bound `created_at <= cursor` goes with the exact row comparison so that PostgreSQL
starts its index walk at the cursor instead of filtering from the newest row down.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Q, QuerySet

from accounting.models import Tenant, TenantApiKey, UsageContent, UsageRecord, UsageRollup
from feedback.models import Feedback, MetricValue
from guardrails.models import GuardrailEvent
from requestlogs.filters import Cursor, Filters

PAGE_SIZE = 50
EXPORT_CHUNK = 2000
CONVERSATION_LIMIT = 100
LIST_FIELDS = (
    "id", "request_id", "created_at", "tenant__slug", "api_key_id", "api_key__name", "api_key__prefix",
    "endpoint", "requested_model", "served_model", "provider_name", "status", "http_status", "error_class",
    "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms", "cache", "stream",
)
EXPORT_FIELDS = (*LIST_FIELDS, "reserved_usd", "route", "variant", "end_user", "task", "tags", "conversation_id")


def records(*, filters: Filters, tenant: Tenant | None) -> QuerySet[UsageRecord]:
    """The records the filters select: the tenant's, or every tenant's for an operator (`None`)."""
    rows = UsageRecord.objects.all() if tenant is None else UsageRecord.objects.filter(tenant=tenant)
    return filters.apply(rows)


@dataclass
class Page:
    rows: list[dict]
    newer: Cursor | None = None  # the cursor of the page before (None: this is the newest page)
    older: Cursor | None = None  # the cursor of the next page (None: nothing older)


def page_read(rows: QuerySet[UsageRecord], *, filters: Filters) -> Page:
    if filters.before is not None:
        return _page_before(rows, filters.before)
    if filters.after is not None:
        rows = _older_than(rows, filters.after)
    found = list(rows.order_by("-created_at", "-id").values(*LIST_FIELDS)[: PAGE_SIZE + 1])
    page = Page(rows=found[:PAGE_SIZE])
    if len(found) > PAGE_SIZE:
        page.older = _cursor(page.rows[-1])
    if filters.after is not None and page.rows:
        page.newer = _cursor(page.rows[0])
    _annotate(page.rows)
    return page


def _page_before(rows: QuerySet[UsageRecord], cursor: Cursor) -> Page:
    c = cursor
    newer = rows.filter(created_at__gte=c.created_at).filter(
        Q(created_at__gt=c.created_at) | Q(created_at=c.created_at, id__gt=c.id))
    found = list(newer.order_by("created_at", "id").values(*LIST_FIELDS)[: PAGE_SIZE + 1])
    page = Page(rows=found[:PAGE_SIZE][::-1])
    if len(found) > PAGE_SIZE:
        page.newer = _cursor(page.rows[0])
    if page.rows:
        page.older = _cursor(page.rows[-1])
    _annotate(page.rows)
    return page


def _older_than(rows: QuerySet[UsageRecord], c: Cursor) -> QuerySet[UsageRecord]:
    return rows.filter(created_at__lte=c.created_at).filter(
        Q(created_at__lt=c.created_at) | Q(created_at=c.created_at, id__lt=c.id))


def _cursor(row: dict) -> Cursor:
    return Cursor(row["created_at"], row["id"])


def _annotate(rows: list[dict]) -> None:
    """Each row's guardrail actions and ratings: two lookups by the page's ids, not a join per row."""
    if not rows:
        return
    actions: dict[uuid.UUID, set[str]] = defaultdict(set)
    for request_id, action in GuardrailEvent.objects.filter(
            request_id__in=[row["request_id"] for row in rows]).values_list("request_id", "action"):
        actions[request_id].add(action)
    ratings: dict[int, list[str]] = defaultdict(list)
    for record_id, rating, score in Feedback.objects.filter(
            usage_record_id__in=[row["id"] for row in rows]).order_by("pk").values_list(
            "usage_record_id", "rating", "score"):
        if text := rating_text(rating, score):
            ratings[record_id].append(text)
    for row in rows:
        row["guardrail"] = ", ".join(sorted(actions.get(row["request_id"], ())))
        row["rating"] = " ".join(ratings.get(row["id"], ()))


def rating_text(rating: int | None, score: int | None) -> str:
    """A thumb as up / down, a score as n/5: plain text, readable without an emoji font (and no
    leading sign that a spreadsheet would take for a formula)."""
    if rating is not None:
        return "up" if rating > 0 else "down"
    return f"{score}/5" if score is not None else ""


def export_chunks(rows: QuerySet[UsageRecord], *, after: Cursor | None):
    """The next `EXPORT_CHUNK` rows after `after`, newest first, with the export's fields."""
    if after is not None:
        rows = _older_than(rows, after)
    chunk = list(rows.order_by("-created_at", "-id").values(*EXPORT_FIELDS)[:EXPORT_CHUNK])
    _annotate(chunk)
    return chunk, (_cursor(chunk[-1]) if len(chunk) == EXPORT_CHUNK else None)


# --- the filter form's choices ----------------------------------------------------------------------
def key_choices(*, tenant: Tenant) -> list[TenantApiKey]:
    return list(TenantApiKey.objects.filter(tenant=tenant).order_by("name", "pk"))


def model_choices(*, tenant: Tenant | None) -> list[str]:
    """Models seen in the daily rollups (cheap to read, unlike a DISTINCT over the records)."""
    rows = UsageRollup.objects.filter(granularity=UsageRollup.Granularity.DAY, dimension=UsageRollup.Dimension.MODEL)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    return sorted(set(rows.values_list("value", flat=True).distinct()[:200]) - {""})


# --- one request ----------------------------------------------------------------------------------
@dataclass
class Detail:
    record: UsageRecord
    content: UsageContent | None
    guardrail_events: list[GuardrailEvent]
    feedback: list[Feedback]
    metric_values: list[MetricValue]
    conversation: list[dict] = field(default_factory=list)

    @property
    def attempts(self) -> list[dict]:
        """The attempt timeline: each deployment tried or skipped, in order, with its bar's width."""
        entries = [entry for entry in self.record.attempts or [] if isinstance(entry, dict)]
        longest = max([entry.get("latency_ms") or 0 for entry in entries] + [1])
        return [{**entry, "width": round(100 * (entry.get("latency_ms") or 0) / longest, 1)} for entry in entries]


def request_detail(*, tenant: Tenant, request_id: uuid.UUID) -> Detail | None:
    record = (UsageRecord.objects.select_related("api_key", "tenant", "provider")
              .filter(tenant=tenant, request_id=request_id).first())
    if record is None:
        return None
    return Detail(
        record=record,
        content=UsageContent.objects.filter(usage_record=record).first(),
        guardrail_events=list(GuardrailEvent.objects.filter(tenant=tenant, request_id=request_id)
                              .select_related("rule").order_by("created_at", "pk")),
        feedback=list(Feedback.objects.filter(tenant=tenant, usage_record=record).order_by("created_at", "pk")),
        metric_values=list(MetricValue.objects.filter(tenant=tenant, usage_record=record)
                           .select_related("metric").order_by("metric__name", "source")),
        conversation=_conversation(record),
    )


def _conversation(record: UsageRecord) -> list[dict]:
    """The other requests of the record's conversation, oldest first (the last `CONVERSATION_LIMIT`)."""
    if not record.conversation_id:
        return []
    rows = (UsageRecord.objects.filter(tenant_id=record.tenant_id, conversation_id=record.conversation_id)
            .exclude(pk=record.pk).order_by("-created_at", "-id")
            .values("request_id", "created_at", "requested_model", "status", "error_class", "cost_usd",
                    "latency_ms")[:CONVERSATION_LIMIT])
    return list(rows)[::-1]
