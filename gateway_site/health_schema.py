"""OpenAPI descriptions of `/ready` and `/metrics` (plain views; see `kernel.openapi`).

For the URLconf: `documented(ready, ReadyDoc)` and `documented(metrics_view, MetricsDoc)`.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers

from kernel.openapi import Error, PublicApiDescription


class ReadyCheck(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "error", "not_configured"])
    ms = serializers.FloatField(help_text="How long the check took.")
    error = serializers.CharField(required=False, help_text="The exception's class, or the timeout.")


class ReadyChecks(serializers.Serializer):
    database = ReadyCheck()
    migrations = ReadyCheck()
    redis = ReadyCheck()
    celery_broker = ReadyCheck()


class ProviderSummary(serializers.Serializer):
    provider = serializers.CharField()
    status = serializers.ChoiceField(choices=["ok", "degraded", "down"])
    deployments = serializers.IntegerField()
    breakers = serializers.DictField(child=serializers.IntegerField(), help_text="Deployments by breaker state.")
    success_rate = serializers.FloatField(required=False, help_text="The lowest among its deployments.")
    last_error = serializers.CharField(required=False)
    last_error_at = serializers.FloatField(required=False, help_text="Epoch seconds.")


class ReadyStatus(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    checks = ReadyChecks()
    providers = ProviderSummary(many=True, required=False, help_text="Only for operators (as /metrics).")


class ReadyDoc(PublicApiDescription):
    @extend_schema(
        operation_id="ready", tags=["service"], summary="Readiness: database, migrations, Redis and broker",
        responses={200: ReadyStatus, 503: OpenApiResponse(ReadyStatus, description="A dependency failed; `checks` names it.")},
    )
    def get(self, request):
        raise NotImplementedError  # never routed: describes gateway_site.health.ready


class MetricsDoc(PublicApiDescription):
    @extend_schema(
        operation_id="metrics", tags=["service"],
        summary="Prometheus metrics (the metrics token, or an allowed address)",
        responses={
            (200, "text/plain"): OpenApiResponse(description="Prometheus text exposition format."),
            403: OpenApiResponse(Error, description="Neither the metrics token nor an allowed address."),
        },
    )
    def get(self, request):
        raise NotImplementedError  # never routed: describes gateway_site.metrics_scrape.metrics_view
