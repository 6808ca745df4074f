"""Dashboard pages: operators compare every tenant, a tenant member sees only their own tenant.

An operator is a staff user with the view permission on what the page shows (usage records here,
feedback in `feedback.views`); staff without it are treated like anyone else, who sees their
membership's tenant or nothing. Views parse the range, check who may see which tenant, call the
selectors in `accounting.dashboards`, and hand rows and SVG charts to the templates; the CSV
export writes the same rows as the tables on the page. A member asking for another tenant gets the same 404 as for
a tenant that does not exist, so the answer never tells whether it exists.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from accounting import dashboards
from accounting.charts import Series, bar_chart, line_chart
from accounting.dashboards import Dimension, Stats, Window
from accounting.models import Tenant, TenantMembership

RANGE_CHOICES = (("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("30d", "Last 30 days"))
BREAKDOWNS = {  # table name: (rollup dimension, CSV column, column heading, table title)
    "models": (Dimension.MODEL, "model", "Model", "By model"),
    "endpoints": (Dimension.ENDPOINT, "endpoint", "Endpoint", "By endpoint"),
    "keys": (Dimension.API_KEY, "api_key", "API key", "By API key"),
    "tasks": (Dimension.TASK, "task", "Task", "By task"),
    "users": (Dimension.END_USER, "end_user", "End user", "By end user"),
}
TABLE_NAMES = (*BREAKDOWNS, "timeline")
# Spreadsheets run a cell starting with one of these as a formula; end users and tasks are
# client-supplied text (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: str = "count"  # text | time | count | usd | percent | ms


STATS_COLUMNS = (
    Column("requests", "Requests"),
    Column("errors", "Errors"),
    Column("error_rate", "Error rate", "percent"),
    Column("prompt_tokens", "Prompt tokens"),
    Column("completion_tokens", "Completion tokens"),
    Column("cost_usd", "Cost", "usd"),
    Column("latency_p50_ms", "Latency p50", "ms"),
    Column("latency_p95_ms", "Latency p95", "ms"),
)
TIMELINE_EXTRA = (Column("ttft_p50_ms", "TTFT p50", "ms"), Column("ttft_p95_ms", "TTFT p95", "ms"))


@dataclass
class Table:
    name: str
    title: str
    columns: tuple[Column, ...]
    rows: list[dict]

    def display_rows(self) -> list[list[str]]:
        return [[_display(row[c.key], c.kind) for c in self.columns] for row in self.rows]


# --- who sees what --------------------------------------------------------------------------------
USAGE_PERMISSION = "accounting.view_usagerecord"


def sees_every_tenant(user, *, permission: str = USAGE_PERMISSION) -> bool:
    return user.is_staff and user.has_perm(permission)


def tenant_for(request: HttpRequest, slug: str, *, permission: str = USAGE_PERMISSION) -> Tenant:
    if sees_every_tenant(request.user, permission=permission):
        return get_object_or_404(Tenant, slug=slug)
    membership = TenantMembership.objects.filter(user=request.user).select_related("tenant").first()
    if membership is None or membership.tenant.slug != slug:
        raise Http404("No such tenant.")
    return membership.tenant


def window_from(request: HttpRequest) -> Window:
    return dashboards.window_for(range_key=request.GET.get("range", dashboards.DEFAULT_RANGE))


# --- pages ----------------------------------------------------------------------------------------
@login_required
def dashboard_index(request: HttpRequest) -> HttpResponse:
    if not sees_every_tenant(request.user):
        membership = TenantMembership.objects.filter(user=request.user).select_related("tenant").first()
        if membership is None:
            raise PermissionDenied("This account belongs to no tenant.")
        url = reverse("dashboard:tenant", kwargs={"slug": membership.tenant.slug})
        query = request.GET.urlencode()
        return redirect(f"{url}?{query}" if query else url)
    window = window_from(request)
    series = dashboards.cost_per_tenant_series(window=window)
    chart = line_chart(
        name="cost-per-tenant", title="Cost per tenant", labels=bucket_labels(window),
        series=[Series(slug, values) for slug, values in series.items()], unit="usd",
        x_label=TIME_AXIS, y_label="Cost (USD)",
    )
    table = _tenants_table(window)
    return render(request, "dashboard/index.html", {
        "window": window, "ranges": RANGE_CHOICES, "chart": chart, "table": table,
        "rows": list(zip(table.rows, table.display_rows())),
    })


@login_required
def dashboard_export_tenants(request: HttpRequest) -> HttpResponse:
    if not sees_every_tenant(request.user):
        raise PermissionDenied
    window = window_from(request)
    return _csv_response(_tenants_table(window), f"tenants-{window.key}.csv")


@login_required
def tenant_dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = tenant_for(request, slug)
    window = window_from(request)
    timeline = dashboards.usage_timeline(tenant=tenant, window=window)
    return render(request, "dashboard/tenant.html", {
        "tenant": tenant,
        "window": window,
        "ranges": RANGE_CHOICES,
        "totals": _stats_display(dashboards.usage_totals(tenant=tenant, window=window)),
        "charts": _tenant_charts(tenant, window, timeline),
        "budgets": [budget_view(b) for b in dashboards.budget_burndowns(tenant=tenant)],
        "tables": [_table(tenant, window, name, timeline) for name in TABLE_NAMES],
        "sees_every_tenant": sees_every_tenant(request.user),
    })


@login_required
def tenant_export(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = tenant_for(request, slug)
    name = request.GET.get("table", "")
    if name not in TABLE_NAMES:
        return HttpResponseBadRequest(
            f"Unknown table; use one of: {', '.join(TABLE_NAMES)}.", content_type="text/plain"
        )
    window = window_from(request)
    return _csv_response(_table(tenant, window, name), f"{tenant.slug}-{name}-{window.key}.csv")


# --- tables ---------------------------------------------------------------------------------------
def _stats_row(stats: Stats) -> dict:
    return {c.key: getattr(stats, c.key) for c in STATS_COLUMNS + TIMELINE_EXTRA}


def _table(tenant: Tenant, window: Window, name: str, timeline=None) -> Table:
    if name == "timeline":
        timeline = timeline if timeline is not None else dashboards.usage_timeline(tenant=tenant, window=window)
        columns = (Column("bucket_start", "Bucket (UTC)", "time"), *STATS_COLUMNS, *TIMELINE_EXTRA)
        rows = [{"bucket_start": bucket, **_stats_row(stats)} for bucket, stats in timeline]
        return Table(name, "Timeline", columns, rows)
    dimension, key, label, title = BREAKDOWNS[name]
    rows = [
        {key: row.label, **_stats_row(row.stats)}
        for row in dashboards.usage_breakdown(tenant=tenant, window=window, dimension=dimension)
    ]
    return Table(name, title, (Column(key, label, "text"), *STATS_COLUMNS), rows)


def _tenants_table(window: Window) -> Table:
    columns = (
        Column("tenant", "Tenant", "text"), Column("requests", "Requests"), Column("cost_usd", "Cost", "usd"),
        Column("tokens", "Tokens"), Column("error_rate", "Error rate", "percent"),
        Column("latency_p95_ms", "Latency p95", "ms"),
    )
    rows = [
        {"tenant": tenant.slug, "name": tenant.name, "tokens": stats.tokens, **_stats_row(stats)}
        for tenant, stats in dashboards.tenant_comparison(window=window)
    ]
    return Table("tenants", "Tenants", columns, rows)


def _display(value, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "time":
        return value.strftime("%Y-%m-%d %H:%M")
    if kind == "count":
        return f"{value:,}"
    if kind == "usd":
        return f"${value:,.4f}"
    if kind == "percent":
        return f"{value * 100:.2f}%"
    if kind == "ms":
        return f"{value:,.0f} ms"
    return str(value)


def _stats_display(stats: Stats) -> dict:
    return {
        "requests": _display(stats.requests, "count"),
        "cost_usd": _display(stats.cost_usd, "usd"),
        "tokens": _display(stats.tokens, "count"),
        "error_rate": _display(stats.error_rate, "percent"),
        "latency_p95_ms": _display(stats.latency_p95_ms, "ms"),
        "cache_hit_rate": _display(stats.cache_hit_rate, "percent"),
        "saved_cost_usd": _display(stats.saved_cost_usd, "usd"),
    }


# --- CSV ------------------------------------------------------------------------------------------
def _csv_value(value, kind: str) -> str:
    if value is None:
        return ""
    if kind == "time":
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return f"{value:.6f}" if kind == "percent" else f"{value:.1f}"
    text = str(value)
    return "'" + text if kind == "text" and text.startswith(FORMULA_PREFIXES) else text


def _csv_response(table: Table, filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow([c.key for c in table.columns])
    for row in table.rows:
        writer.writerow([_csv_value(row[c.key], c.kind) for c in table.columns])
    return response


# --- charts ---------------------------------------------------------------------------------------
TIME_AXIS = "Time (UTC)"


def bucket_labels(window: Window) -> list[str]:
    pattern = "%H:%M" if window.granularity == dashboards.Granularity.HOUR else "%b %d"
    return [bucket.strftime(pattern) for bucket in window.buckets]


def _tenant_charts(tenant: Tenant, window: Window, timeline: list[tuple[datetime, Stats]]) -> list[dict]:
    labels, stats = bucket_labels(window), [s for _, s in timeline]
    by_model = dashboards.cost_by_model_series(tenant=tenant, window=window)
    return [
        {"title": "Cost", "svg": bar_chart(
            name="cost", title="Cost", labels=labels, unit="usd", x_label=TIME_AXIS, y_label="USD",
            series=[Series("Cost (USD)", [float(s.cost_usd) for s in stats])])},
        {"title": "Tokens", "svg": bar_chart(
            name="tokens", title="Tokens", labels=labels, x_label=TIME_AXIS, y_label="Tokens",
            series=[Series("Prompt", [s.prompt_tokens for s in stats]),
                    Series("Completion", [s.completion_tokens for s in stats])])},
        {"title": "Cost by model", "svg": bar_chart(
            name="cost-by-model", title="Cost by model", labels=labels, unit="usd", x_label=TIME_AXIS,
            y_label="USD",
            series=[Series(model, values) for model, values in by_model.items()])},
        {"title": "Latency", "svg": line_chart(
            name="latency", title="Latency p50 / p95", labels=labels, unit="ms", x_label=TIME_AXIS,
            y_label="Latency",
            series=[Series("p50", [s.latency_p50_ms for s in stats]),
                    Series("p95", [s.latency_p95_ms for s in stats])])},
        {"title": "Error rate", "svg": line_chart(
            name="error-rate", title="Error rate", labels=labels, unit="percent", x_label=TIME_AXIS,
            y_label="Errors / requests",
            series=[Series("Errors / requests", [s.error_rate for s in stats], color="#dc2626")])},
    ]


def budget_view(burn: dashboards.BurnDown) -> dict:
    pattern = "%H:%M" if burn.budget.period == "daily" else "%b %d"
    # The point for "now" sits between the grid points: it gets a tooltip but no axis label.
    labels = ["" if p == burn.now else p.strftime(pattern) for p in burn.points]
    chart = line_chart(
        name=f"budget-{burn.budget.pk}", title=f"Budget burn-down ({burn.scope}, {burn.budget.period})",
        labels=labels, positions=burn.positions, unit="usd", x_label=TIME_AXIS, y_label="Remaining (USD)",
        series=[Series("Remaining", burn.remaining, color="#2563eb"),
                Series("Projection", burn.projection, color="#ea580c", dashed=True)],
    )
    return {"burn": burn, "chart": chart}
