"""The request log pages: a tenant's members see their tenant's requests, operators every tenant's.

Who sees what is the usage dashboards' rule (`accounting.views.tenant_for`): an operator is staff
with `accounting.view_usagerecord`; a member asking for another tenant, or for a request of
another tenant, gets the same 404 as for one that does not exist. Bad filter values answer 400
with the page (or, for the CSV, a line of text) saying what is wrong with each.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from accounting.models import Tenant, TenantMembership
from accounting.views import FORMULA_PREFIXES, sees_every_tenant, tenant_for
from requestlogs import selectors
from requestlogs.filters import PARAMETERS, STATUSES, TEXT_FILTERS, Filters, error_classes, filters_parse

CSV_COLUMNS = (
    "created_at", "request_id", "tenant", "api_key", "endpoint", "requested_model", "served_model", "provider",
    "status", "http_status", "error_class", "prompt_tokens", "completion_tokens", "cost_usd", "reserved_usd",
    "latency_ms", "ttft_ms", "cache", "guardrail", "rating", "route", "variant", "end_user", "task", "tags",
    "conversation_id",
)


@login_required
def tenant_requests(request: HttpRequest, slug: str) -> HttpResponse:
    return _list_page(request, tenant_for(request, slug))


@login_required
def operator_requests(request: HttpRequest) -> HttpResponse:
    if not sees_every_tenant(request.user):
        return _to_own_tenant(request, "dashboard:tenant-requests")
    return _list_page(request, None)


@login_required
def tenant_requests_export(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = tenant_for(request, slug)
    return _export(request, tenant, tenant.slug)


@login_required
def operator_requests_export(request: HttpRequest) -> HttpResponse:
    if not sees_every_tenant(request.user):
        return _to_own_tenant(request, "dashboard:tenant-requests-export")
    return _export(request, None, "all-tenants")


@login_required
def request_detail(request: HttpRequest, slug: str, request_id: uuid.UUID) -> HttpResponse:
    tenant = tenant_for(request, slug)
    detail = selectors.request_detail(tenant=tenant, request_id=request_id)
    if detail is None:
        raise Http404("No such request.")
    return render(request, "dashboard/request_detail.html", {
        "tenant": tenant, "detail": detail, "record": detail.record,
        "sees_every_tenant": sees_every_tenant(request.user),
        "ratings": [(item, selectors.rating_text(item.rating, item.score)) for item in detail.feedback],
    })


def _to_own_tenant(request: HttpRequest, name: str) -> HttpResponse:
    """A member is sent to their tenant's page with the same query; anyone else is refused."""
    membership = TenantMembership.objects.filter(user=request.user).select_related("tenant").first()
    if membership is None:
        raise PermissionDenied("This account belongs to no tenant.")
    url = reverse(name, kwargs={"slug": membership.tenant.slug})
    query = request.GET.urlencode()
    return redirect(f"{url}?{query}" if query else url)


def _list_page(request: HttpRequest, tenant: Tenant | None) -> HttpResponse:
    filters = filters_parse(request.GET, operator=tenant is None)
    page = None
    if not filters.errors:
        page = selectors.page_read(selectors.records(filters=filters, tenant=tenant), filters=filters)
    context = {
        "tenant": tenant, "filters": filters, "page": page,
        "raw": {name: request.GET.get(name, "").strip() for name in PARAMETERS},
        "rows": [_row_view(row, tenant) for row in page.rows] if page else [],
        "newer_query": filters.query(before=str(page.newer)) if page and page.newer else None,
        "older_query": filters.query(after=str(page.older)) if page and page.older else None,
        "export_query": filters.query(),
        "filtered": bool(filters.query()),
        "scan_limit": f"{selectors.SCAN_STRETCHES[-1]:,}", "statuses": STATUSES, "error_classes": error_classes(),
        "text_filters": [(name, label, filters.text.get(name, "")) for name, label in TEXT_FILTERS],
        "keys": selectors.key_choices(tenant=tenant) if tenant is not None else [],
        "models": selectors.model_choices(tenant=tenant),
        "sees_every_tenant": sees_every_tenant(request.user),
    }
    return render(request, "dashboard/requests.html", context, status=400 if filters.errors else 200)


def _row_view(row: dict, tenant: Tenant | None) -> dict:
    """A row's cells as text: formatted here once, so the template only prints them."""
    slug = tenant.slug if tenant is not None else row["tenant__slug"]
    ok = row["status"] == "success"
    return {
        "request_id": row["request_id"], "short_id": str(row["request_id"])[:8], "ok": ok,
        "url": f"{reverse('dashboard:tenant-requests', kwargs={'slug': slug})}{row['request_id']}/",
        "time": row["created_at"].strftime("%Y-%m-%d %H:%M:%S"), "tenant": slug,
        "key": _key_label(row) or "—", "asked": row["requested_model"], "served": row["served_model"] or "—",
        "provider": row["provider_name"] or "—", "endpoint": row["endpoint"], "stream": row["stream"],
        "status": "ok" if ok else (row["error_class"] or row["status"]), "http_status": row["http_status"],
        "tokens": f"{row['prompt_tokens'] + row['completion_tokens']:,}", "cost": f"${row['cost_usd']:.6f}",
        "latency": f"{row['latency_ms']:,} ms", "ttft": f"{row['ttft_ms']:,} ms" if row["ttft_ms"] is not None else "—",
        "cache": row["cache"] or "—", "guardrail": row["guardrail"] or "—", "rating": row["rating"] or "—",
    }


def _key_label(row: dict) -> str:
    if row["api_key_id"] is None:
        return ""
    return f"{row['api_key__name']} ({row['api_key__prefix']}…)"


# --- CSV ------------------------------------------------------------------------------------------
def _export(request: HttpRequest, tenant: Tenant | None, name: str) -> HttpResponse:
    filters = filters_parse(request.GET, operator=tenant is None)
    if filters.errors:
        return HttpResponse(_errors_text(filters), status=400, content_type="text/plain; charset=utf-8")
    selection = selectors.records(filters=filters, tenant=tenant)
    response = StreamingHttpResponse(_csv_lines(selection), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}-requests.csv"'
    return response


def _errors_text(filters: Filters) -> str:
    return "Bad filters: " + "; ".join(f"{name}: {message}" for name, message in filters.errors.items()) + "\n"


async def _csv_lines(selection: selectors.Selection) -> AsyncIterator[str]:
    """The filtered records as CSV, read in keyset chunks while the response is being sent."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    after, more = None, True
    while more:
        chunk, after, more = await sync_to_async(selectors.export_chunks)(selection, after=after)
        for row in chunk:
            writer.writerow([_csv_cell(value) for value in _csv_row(row)])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _csv_row(row: dict) -> list:
    return [
        row["created_at"].isoformat(), row["request_id"], row["tenant__slug"], _key_label(row), row["endpoint"],
        row["requested_model"], row["served_model"], row["provider_name"], row["status"], row["http_status"],
        row["error_class"], row["prompt_tokens"], row["completion_tokens"], row["cost_usd"], row["reserved_usd"],
        row["latency_ms"], row["ttft_ms"], row["cache"], row["guardrail"], row["rating"], row["route"],
        row["variant"], row["end_user"], row["task"], " ".join(str(tag) for tag in row["tags"] or []),
        row["conversation_id"],
    ]


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    text = str(value)
    # Client-supplied text (end users, tags, tasks) that a spreadsheet would run as a formula.
    return "'" + text if isinstance(value, str) and text.startswith(FORMULA_PREFIXES) else text
