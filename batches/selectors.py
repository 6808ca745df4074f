"""Reads of the Files and Batches API, always scoped to the tenant: another tenant's id is a
missing one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal

from django.db.models import Q, Sum

from accounting.budgets import period_start
from accounting.models import Budget, BudgetPeriod, UsageRecord
from batches.models import Batch, BatchFile, BatchLine


def file_get(*, tenant_id: int, file_id: str) -> BatchFile | None:
    return BatchFile.objects.filter(tenant_id=tenant_id, pk=file_id).first()


def batch_get(*, tenant_id: int, batch_id: str) -> Batch | None:
    return Batch.objects.filter(tenant_id=tenant_id, pk=batch_id).first()


def page(queryset, *, after: str, limit: int) -> tuple[list, bool]:
    """A cursor page of `queryset` (newest first): the objects after the one whose id is `after`,
    at most `limit`, and whether more follow. An `after` not found gives the first page."""
    if after:
        anchor = queryset.filter(pk=after).values_list("created_at", flat=True).first()
        if anchor is not None:
            queryset = queryset.filter(Q(created_at__lt=anchor) | Q(created_at=anchor, pk__lt=after))
    rows = list(queryset.order_by("-created_at", "-pk")[: limit + 1])
    return rows[:limit], len(rows) > limit


def files_page(*, tenant_id: int, purpose: str, after: str, limit: int) -> tuple[list[BatchFile], bool]:
    queryset = BatchFile.objects.filter(tenant_id=tenant_id)
    if purpose:
        queryset = queryset.filter(purpose=purpose)
    return page(queryset, after=after, limit=limit)


def batches_page(*, tenant_id: int, after: str, limit: int) -> tuple[list[Batch], bool]:
    return page(Batch.objects.filter(tenant_id=tenant_id), after=after, limit=limit)


@dataclass(frozen=True)
class BudgetLeft:
    """The hard budget with the least left in its current period."""

    left: Decimal
    amount: Decimal
    period: str
    scope: str  # tenant or api_key


def budget_left(*, tenant_id: int, key_id: int, now: datetime | None = None) -> BudgetLeft | None:
    """What is left of the tightest hard budget over the key (its own, its tenant's) in its current
    period, spent and reserved taken off; None when no hard budget applies."""
    now = now or datetime.now(dt_timezone.utc)
    tightest = None
    budgets = Budget.objects.filter(enabled=True, hard=True, tenant_id=tenant_id).filter(
        Q(api_key__isnull=True) | Q(api_key_id=key_id))
    for budget in budgets:
        row = BudgetPeriod.objects.filter(budget=budget, period_start=period_start(budget.period, now)).first()
        taken = (row.spent_usd + row.reserved_usd) if row is not None else Decimal("0")
        left = BudgetLeft(left=max(budget.amount_usd - taken, Decimal("0")), amount=budget.amount_usd,
                          period=budget.period, scope="api_key" if budget.api_key_id else "tenant")
        if tightest is None or left.left < tightest.left:
            tightest = left
    return tightest


def batch_cost(batch: Batch) -> Decimal:
    """What the batch's lines have cost so far: the sum of their UsageRecords."""
    ids = BatchLine.objects.filter(batch_id=batch.pk).values("request_id")
    return UsageRecord.objects.filter(tenant_id=batch.tenant_id, request_id__in=ids).aggregate(
        total=Sum("cost_usd"))["total"] or Decimal("0")
