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
from datetime import datetime

from django.db.models import Q, QuerySet

from accounting.models import Tenant, TenantApiKey, UsageContent, UsageRecord, UsageRollup
from feedback.models import Feedback, MetricValue
from guardrails.models import GuardrailEvent
from requestlogs.filters import Cursor, Filters

PAGE_SIZE = 50
EXPORT_CHUNK = 2000
# The stretches of the index a page reads, one after the other while fewer than a page match, to
# check its scanned conditions (model, provider, tag...): the last is the most a page reads.
SCAN_STRETCHES = (1_000, 10_000)
CONVERSATION_LIMIT = 100
LIST_FIELDS = (
    "id", "request_id", "created_at", "tenant__slug", "api_key_id", "api_key__name", "api_key__prefix",
    "endpoint", "requested_model", "served_model", "provider_name", "status", "http_status", "error_class",
    "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms", "cache", "stream",
)
EXPORT_FIELDS = (*LIST_FIELDS, "reserved_usd", "route", "variant", "end_user", "task", "tags", "conversation_id")


@dataclass(frozen=True)
class Selection:
    """The records a filter set selects: `indexed` (a queryset an index walks in time order) and
    the `scanned` conditions checked on each of its rows."""

    indexed: QuerySet[UsageRecord]
    scanned: Q | None


def records(*, filters: Filters, tenant: Tenant | None) -> Selection:
    """The tenant's records, or every tenant's for an operator (`None`, or the `tenant` filter)."""
    rows = UsageRecord.objects.all()
    if tenant is None and filters.tenant:
        tenant = Tenant.objects.filter(slug=filters.tenant).first()
        if tenant is None:
            rows = UsageRecord.objects.none()
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    return Selection(indexed=rows.filter(filters.indexed()), scanned=filters.scanned())


@dataclass
class Page:
    rows: list[dict]
    newer: Cursor | None = None  # the cursor of the page before (None: this is the newest page)
    older: Cursor | None = None  # the cursor of the next page (None: nothing older)
    searched_to: datetime | None = None  # a short page: how far back (or forward) the scan went


def page_read(selection: Selection, *, filters: Filters) -> Page:
    """A page of `PAGE_SIZE` rows after (older than) `filters.after`, before (newer than)
    `filters.before`, or the newest. A page whose scanned conditions match few rows stops after
    the last of `SCAN_STRETCHES` rows of the index and links on from there."""
    newest_first = filters.before is None
    found, bound = _read(selection, cursor=filters.before or filters.after, newest_first=newest_first,
                         limit=PAGE_SIZE + 1)
    rows = found[:PAGE_SIZE]
    more = _cursor(rows[-1]) if len(found) > PAGE_SIZE else bound
    page = Page(rows=rows if newest_first else rows[::-1])
    page.searched_to = bound.created_at if more is bound and bound is not None else None
    # An empty stretch links only on in its own direction (and to the newest page).
    if newest_first:
        page.older = more
        page.newer = _cursor(page.rows[0]) if filters.after is not None and page.rows else None
    else:
        page.newer = more
        page.older = _cursor(page.rows[-1]) if page.rows else None
    _annotate(page.rows)
    return page


def _read(selection: Selection, *, cursor: Cursor | None, newest_first: bool, limit: int,
          fields: tuple[str, ...] = LIST_FIELDS) -> tuple[list[dict], Cursor | None]:
    """Up to `limit` matching rows from `cursor` on, in the page's order, and the bound of the
    stretch read (None: it reached the end). The scanned conditions are checked on a stretch of
    `SCAN_STRETCHES` rows, a longer one while fewer than `limit` match, the longest at most."""
    order = ("-created_at", "-id") if newest_first else ("created_at", "id")
    rows = selection.indexed
    if cursor is not None:
        rows = _beyond(rows, cursor, older=newest_first, inclusive=False)
    if selection.scanned is None:
        return list(rows.order_by(*order).values(*fields)[:limit]), None
    for stretch in SCAN_STRETCHES:
        # The stretch's last row, on the index alone; None: the stretch reaches the end.
        last = rows.order_by(*order).values_list("created_at", "id")[stretch - 1:stretch]
        bound = Cursor(*last[0]) if last else None
        bounded = rows if bound is None else _beyond(rows, bound, older=not newest_first, inclusive=True)
        found = list(bounded.filter(selection.scanned).order_by(*order).values(*fields)[:limit])
        if len(found) == limit or bound is None:
            break
    return found, bound


def _beyond(rows: QuerySet[UsageRecord], c: Cursor, *, older: bool, inclusive: bool) -> QuerySet[UsageRecord]:
    """Rows older (or newer) than the cursor's row in the order (created_at, id); `inclusive`,
    the row itself too. The plain bound on created_at is what the index walk starts from."""
    if older:
        tie = Q(created_at=c.created_at, id__lte=c.id) if inclusive else Q(created_at=c.created_at, id__lt=c.id)
        return rows.filter(created_at__lte=c.created_at).filter(Q(created_at__lt=c.created_at) | tie)
    tie = Q(created_at=c.created_at, id__gte=c.id) if inclusive else Q(created_at=c.created_at, id__gt=c.id)
    return rows.filter(created_at__gte=c.created_at).filter(Q(created_at__gt=c.created_at) | tie)


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


def export_chunks(selection: Selection, *, after: Cursor | None) -> tuple[list[dict], Cursor | None, bool]:
    """The next matching rows after `after`, newest first, with the export's fields: the rows,
    the cursor to go on from, and whether there is more to read."""
    found, bound = _read(selection, cursor=after, newest_first=True, limit=EXPORT_CHUNK, fields=EXPORT_FIELDS)
    _annotate(found)
    if len(found) == EXPORT_CHUNK:
        return found, _cursor(found[-1]), True
    return found, bound, bound is not None


# --- the filter form's choices ----------------------------------------------------------------------
def key_choices(*, tenant: Tenant) -> list[TenantApiKey]:
    return list(TenantApiKey.objects.filter(tenant=tenant).order_by("name", "pk"))


def model_choices(*, tenant: Tenant | None) -> list[str]:
    """Models seen in the daily rollups (cheap to read, unlike a DISTINCT over the records)."""
    rows = UsageRollup.objects.filter(granularity=UsageRollup.Granularity.DAY, dimension=UsageRollup.Dimension.MODEL)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    return sorted(set(rows.order_by("value").values_list("value", flat=True).distinct()[:200]) - {""})


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
