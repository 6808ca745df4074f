"""Guardrail panels of the dashboards: events per tenant, kind and action in a window."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count

from accounting.dashboards import Window
from accounting.models import Tenant
from guardrails.models import GuardrailEvent


@dataclass(frozen=True)
class GuardrailCount:
    tenant: str
    kind: str
    action: str
    events: int


def guardrail_event_counts(*, window: Window, tenant: Tenant | None = None) -> list[GuardrailCount]:
    """Guardrail events per tenant, kind and action in the window, most first. Counted from the
    events themselves (indexed by tenant and time), which are few next to usage records."""
    rows = GuardrailEvent.objects.filter(created_at__gte=window.start, created_at__lt=window.end)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    counted = rows.values("tenant__slug", "kind", "action").annotate(events=Count("pk"))
    result = [GuardrailCount(r["tenant__slug"], r["kind"], r["action"], r["events"]) for r in counted]
    result.sort(key=lambda c: (-c.events, c.tenant, c.kind, c.action))
    return result
