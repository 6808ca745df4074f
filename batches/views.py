"""The batches dashboard: a tenant's members see their tenant's batches, operators every tenant's
(same rules as the usage dashboards, `accounting.views`): progress, lines failed, cost so far."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounting.models import Tenant
from accounting.views import sees_every_tenant, tenant_for
from batches.models import Batch
from batches.selectors import batch_cost

BATCH_PERMISSION = "batches.view_batch"
ROWS = 100


def _page(request: HttpRequest, tenant: Tenant | None) -> HttpResponse:
    batches = Batch.objects.select_related("tenant").order_by("-created_at", "-pk")
    if tenant is not None:
        batches = batches.filter(tenant=tenant)
    rows = [{"batch": batch, "done": batch.completed + batch.failed, "cost": batch_cost(batch)}
            for batch in batches[:ROWS]]
    return render(request, "dashboard/batches.html", {"tenant": tenant, "rows": rows, "limit": ROWS})


@login_required
def tenant_batches(request: HttpRequest, slug: str) -> HttpResponse:
    return _page(request, tenant_for(request, slug, permission=BATCH_PERMISSION))


@login_required
def operator_batches(request: HttpRequest) -> HttpResponse:
    if not sees_every_tenant(request.user, permission=BATCH_PERMISSION):
        raise PermissionDenied
    return _page(request, None)
