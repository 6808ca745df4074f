"""Feedback dashboards: a tenant's members see their tenant, operators every tenant.

Same rules as the usage dashboards (`accounting.views`): an operator is staff with the view
permission on feedback; a member asking for another tenant gets the same 404 as for a tenant that
does not exist.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render

from accounting.charts import Series, bar_chart, line_chart
from accounting.models import Tenant
from accounting.views import RANGE_CHOICES, TIME_AXIS, bucket_labels, sees_every_tenant, tenant_for, window_from
from feedback import dashboards
from feedback.models import FeedbackMetric, FeedbackRollup

FEEDBACK_PERMISSION = "feedback.view_feedback"
Dimension = FeedbackRollup.Dimension
BREAKDOWNS = ((Dimension.MODEL, "By model"), (Dimension.ROUTE, "By route"), (Dimension.TAG, "By request tag"),
              (Dimension.VARIANT, "By experiment variant"))


TAGS_CHARTED = 12


def _charts(window, labels, tenant, tags) -> list:
    charts = [
        line_chart(
            name=f"rating-by-{dimension}", title=f"Mean rating by {dimension}", labels=labels, unit="count",
            x_label=TIME_AXIS, y_label="Mean rating (0 bad, 1 good)",
            series=[Series(name, values) for name, values in dashboards.rating_series(
                window=window, dimension=dimension, tenant=tenant).items()],
        )
        for dimension in (Dimension.MODEL, Dimension.ROUTE)
    ]
    metrics = dashboards.metric_series(window=window, tenant=tenant)
    charts.append(line_chart(
        name="metrics", title="Metrics (mean per bucket)", labels=labels, unit="count",
        x_label=TIME_AXIS, y_label="Mean value",
        series=[Series(name, values) for name, values in metrics.items()],
    ))
    shown = tags[:TAGS_CHARTED]
    charts.append(bar_chart(
        name="feedback-tags", title="Feedback tags", labels=[row.tag for row in shown], unit="count",
        x_label="Tag sent with feedback", y_label="Feedback",
        series=[Series("Feedback with the tag", [row.feedback for row in shown])],
    ))
    return charts


def _page(request: HttpRequest, tenant: Tenant | None) -> HttpResponse:
    window = window_from(request)
    tags = dashboards.feedback_tags(window=window, tenant=tenant)
    tables = [
        {"name": dimension, "title": title,
         "rows": dashboards.breakdown(window=window, dimension=dimension, tenant=tenant)}
        for dimension, title in BREAKDOWNS
    ]
    metric_names = sorted(
        {name for table in tables for row in table["rows"] for name in row.metrics}
    )
    return render(request, "dashboard/feedback.html", {
        "tenant": tenant,
        "window": window,
        "ranges": RANGE_CHOICES,
        "charts": _charts(window, bucket_labels(window), tenant, tags),
        "tags": tags,
        "tables": tables,
        "metric_names": metric_names,
        "declared_metrics": FeedbackMetric.objects.filter(tenant=tenant) if tenant else [],
        "tenant_rows": dashboards.tenant_breakdown(window=window) if tenant is None else [],
        "worst": dashboards.worst_rated(window=window, tenant=tenant),
    })


@login_required
def operator_feedback(request: HttpRequest) -> HttpResponse:
    if not sees_every_tenant(request.user, permission=FEEDBACK_PERMISSION):
        raise PermissionDenied
    return _page(request, None)


@login_required
def tenant_feedback(request: HttpRequest, slug: str) -> HttpResponse:
    return _page(request, tenant_for(request, slug, permission=FEEDBACK_PERMISSION))


def _jsonl(request: HttpRequest, tenant: Tenant | None, filename: str) -> StreamingHttpResponse:
    window = window_from(request)
    response = StreamingHttpResponse(
        dashboards.corrections_jsonl(window=window, tenant=tenant), content_type="application/jsonl; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}-corrections-{window.key}.jsonl"'
    return response


@login_required
def operator_corrections(request: HttpRequest) -> HttpResponse:
    if not sees_every_tenant(request.user, permission=FEEDBACK_PERMISSION):
        raise PermissionDenied
    return _jsonl(request, None, "all-tenants")


@login_required
def tenant_corrections(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = tenant_for(request, slug, permission=FEEDBACK_PERMISSION)
    return _jsonl(request, tenant, tenant.slug)
