"""`/metrics`: the metrics every process recorded (`kernel.metrics`), then gauges computed at
scrape time from shared state: circuit breakers, deployment health, budgets.

Breakers and health live in Redis (or in process in the embedded mode) and budgets in the
database, so every worker reads the same values; keeping them as per-process gauges would make
two workers disagree. A section that cannot be read (the database is down) is left out of the
scrape and flagged in `gateway_metrics_scrape_error` rather than failing the whole scrape.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from accounting.budgets import period_start
from accounting.models import Budget, BudgetPeriod
from kernel.errors import PermissionDenied, error_response
from kernel.metrics import MULTIPROC_DIR, operator_allowed
from routing.explain import provider_health_rows

logger = logging.getLogger(__name__)

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class SharedStateCollector:
    """A `prometheus_client` collector; registered in a fresh registry for each scrape."""

    def collect(self):
        failed = GaugeMetricFamily(
            "gateway_metrics_scrape_error",
            "1 when a section of the scrape-time gauges could not be read in this scrape.",
            labels=["section"],
        )
        for section, produce in (("deployments", _deployment_families), ("budgets", _budget_families)):
            try:
                families = produce()
            except Exception as exc:  # the database or Redis is down: report it, keep the rest
                logger.warning("metrics: %s not readable (%s)", section, type(exc).__name__)
                failed.add_metric([section], 1)
                continue
            failed.add_metric([section], 0)
            yield from families
        yield failed


def _deployment_families() -> list[GaugeMetricFamily]:

    labels = ["provider", "model", "deployment"]
    state = GaugeMetricFamily(
        "gateway_circuit_breaker_state",
        "Circuit breaker of each deployment: 0 closed, 1 half-open, 2 open.", labels=labels,
    )
    success = GaugeMetricFamily(
        "gateway_deployment_success_ratio",
        "Moving average of the attempts that succeeded (routing's health EWMA).", labels=labels,
    )
    latency = GaugeMetricFamily(
        "gateway_deployment_latency_seconds",
        "Moving average of latency (time to first token for streams) that routing ranks on.",
        labels=labels,
    )
    for row in provider_health_rows():
        deployment, breaker, health = row["deployment"], row["breaker"], row["health"]
        values = [deployment.target.provider_name, deployment.alias, row["key"]]
        state.add_metric(values, BREAKER_VALUES.get(breaker.state if breaker else "closed", 0))
        if health is not None and health.success_rate is not None:
            success.add_metric(values, health.success_rate)
        if health is not None and health.ranking_latency_ms is not None:
            latency.add_metric(values, health.ranking_latency_ms / 1000)
    return [state, success, latency]


def _budget_families() -> list[GaugeMetricFamily]:

    labels = ["tenant", "scope", "period", "hard"]
    families = {
        name: GaugeMetricFamily(f"gateway_budget_{name}", text, labels=labels)
        for name, text in (
            ("utilisation_ratio", "Spent share of each enabled budget in its current period (1 = all of it)."),
            ("spent_usd", "Spent in the budget's current period, in USD."),
            ("reserved_usd", "Held for requests in flight in the current period, in USD."),
            ("limit_usd", "The budget's amount, in USD."),
        )
    }
    now = datetime.now(timezone.utc)
    budgets = list(Budget.objects.filter(enabled=True).select_related("tenant", "api_key"))
    starts = {budget.pk: period_start(budget.period, now) for budget in budgets}
    periods = {
        (row.budget_id, row.period_start): row
        for row in BudgetPeriod.objects.filter(budget__in=budgets, period_start__gte=min(starts.values()))
    } if budgets else {}
    for budget in budgets:
        row = periods.get((budget.pk, starts[budget.pk]))
        spent = float(row.spent_usd) if row else 0.0
        reserved = float(row.reserved_usd) if row else 0.0
        amount = float(budget.amount_usd)
        scope = f"key:{budget.api_key.name}" if budget.api_key_id else "tenant"
        values = [budget.tenant.slug, scope, budget.period, "true" if budget.hard else "false"]
        families["utilisation_ratio"].add_metric(values, spent / amount if amount > 0 else 0.0)
        families["spent_usd"].add_metric(values, spent)
        families["reserved_usd"].add_metric(values, reserved)
        families["limit_usd"].add_metric(values, amount)
    return list(families.values())


def exposition() -> bytes:
    """The text Prometheus scrapes: every process's metrics, then the scrape-time gauges.

    Sync: the scrape-time gauges read the database and Redis; the view runs this in a thread.
    """
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        recorded = generate_latest(registry)
    else:
        recorded = generate_latest(REGISTRY)
    shared = CollectorRegistry()
    shared.register(SharedStateCollector())
    return recorded + generate_latest(shared)


async def metrics_view(request: HttpRequest) -> HttpResponse:
    if not operator_allowed(request):
        return error_response(PermissionDenied(
            "Metrics need the metrics token (Authorization: Bearer) or an allowed address.",
            code="metrics_forbidden",
        ))
    body = await sync_to_async(exposition)()
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
