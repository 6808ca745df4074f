"""Operator API for routing: `/v1/routing-rules` and `/v1/route-groups` (with their deployments).

Staff with the model's permission (see `operators.permissions`). The tenant-facing routing views are in `routing.api`.
"""

from __future__ import annotations

from types import SimpleNamespace

from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from operators.api import OperatorViewSet
from providers.api import ProviderViewSet
from providers.models import Provider
from routing.explain import provider_health_rows
from routing.models import Deployment, RouteGroup, RoutingRule


class DeploymentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Deployment
        fields = ["id", "provider_model", "provider_key", "priority", "weight", "enabled"]
        extra_kwargs = {"weight": {"max_value": 1_000_000}}

    def validate(self, data: dict) -> dict:
        key, model = data.get("provider_key"), data["provider_model"]
        if key is not None and key.provider_id != model.provider_id:
            raise serializers.ValidationError({"provider_key": "This key belongs to another provider than the model."})
        return data


class RouteGroupSerializer(serializers.ModelSerializer):
    """A group and its deployments; writing `deployments` replaces the whole list."""

    deployments = DeploymentSerializer(many=True, required=False)

    class Meta:
        model = RouteGroup
        fields = [
            "id", "name", "strategy", "retries", "attempt_timeout_seconds", "total_timeout_seconds",
            "breaker_failure_threshold", "breaker_cooldown_seconds", "best_rated_lambda", "best_rated_min_share",
            "best_rated_min_ratings", "best_rated_metric", "deployments", "created_at", "updated_at",
        ]
        extra_kwargs = {
            "retries": {"max_value": 10},
            "attempt_timeout_seconds": {"min_value": 0.1, "max_value": 3600},
            "total_timeout_seconds": {"min_value": 0.1, "max_value": 3600},
            "breaker_failure_threshold": {"min_value": 1, "max_value": 1000},
            "breaker_cooldown_seconds": {"min_value": 0.1, "max_value": 86400},
            "best_rated_lambda": {"min_value": 0.0, "max_value": 1e12},
            "best_rated_min_share": {"min_value": 0.0, "max_value": 1.0},
            "best_rated_min_ratings": {"max_value": 2_147_483_647},
        }

    @transaction.atomic
    def create(self, validated_data: dict) -> RouteGroup:
        deployments = validated_data.pop("deployments", [])
        group = RouteGroup.objects.create(**validated_data)
        self._deploy(group, deployments)
        return group

    @transaction.atomic
    def update(self, instance: RouteGroup, validated_data: dict) -> RouteGroup:
        deployments = validated_data.pop("deployments", None)
        instance = super().update(instance, validated_data)
        if deployments is not None:
            instance.deployments.all().delete()
            self._deploy(instance, deployments)
        return instance

    def _deploy(self, group: RouteGroup, deployments: list[dict]) -> None:
        for data in deployments:
            Deployment.objects.create(group=group, **data)


class RoutingRuleSerializer(serializers.ModelSerializer):
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=50,
        help_text="All of these tags must be sent (metadata.tags).",
    )

    class Meta:
        model = RoutingRule
        fields = [
            "id", "name", "priority", "enabled", "model", "tenants", "api_keys", "task", "tags", "group",
            "created_at", "updated_at",
        ]
        extra_kwargs = {"tenants": {"required": False}, "api_keys": {"required": False}}


class RouteGroupViewSet(OperatorViewSet):
    queryset = RouteGroup.objects.prefetch_related("deployments")
    serializer_class = RouteGroupSerializer


class RoutingRuleViewSet(OperatorViewSet):
    queryset = RoutingRule.objects.select_related("group").prefetch_related("tenants", "api_keys")
    serializer_class = RoutingRuleSerializer


class BreakerSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["closed", "open", "half_open"])
    failures = serializers.IntegerField()
    retry_in = serializers.FloatField(help_text="Seconds until an open breaker lets a probe through.")


class HealthNumbersSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    failures = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True, help_text="Moving average, 0 to 1.")
    latency_ms = serializers.FloatField(allow_null=True)
    ttft_ms = serializers.FloatField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    last_error_at = serializers.FloatField(allow_null=True, help_text="Unix time.")


class DeploymentHealthSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="The (provider model, provider key) pair breakers are kept for.")
    model_id = serializers.IntegerField()
    alias = serializers.CharField()
    upstream_model = serializers.CharField()
    breaker = BreakerSerializer()
    health = HealthNumbersSerializer()


class ProviderHealthSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    enabled = serializers.BooleanField()
    status = serializers.ChoiceField(
        choices=["healthy", "degraded", "down", "unknown", "disabled"],
        help_text="down: every breaker open; degraded: some open; unknown: nothing deployable.",
    )
    deployments = DeploymentHealthSerializer(many=True)


CLOSED_BREAKER = SimpleNamespace(state="closed", failures=0, retry_in=0.0)


def provider_health(*, provider: Provider) -> dict:
    """The provider's deployments with breaker and health, from the admin's health page service."""
    rows = [row for row in provider_health_rows() if row["deployment"].target.provider_id == provider.pk]
    deployments = [
        {
            "key": row["key"],
            "model_id": row["deployment"].model_id,
            "alias": row["deployment"].alias,
            "upstream_model": row["deployment"].target.upstream_model,
            "breaker": row["breaker"] or CLOSED_BREAKER,
            "health": row["health"],
        }
        for row in rows
    ]
    states = [d["breaker"].state for d in deployments]
    if not provider.enabled:
        status = "disabled"
    elif not states:
        status = "unknown"
    elif all(state == "open" for state in states):
        status = "down"
    elif any(state != "closed" for state in states):
        status = "degraded"
    else:
        status = "healthy"
    return {"id": provider.pk, "name": provider.name, "enabled": provider.enabled, "status": status,
            "deployments": deployments}


class ProviderHealthViewSet(ProviderViewSet):
    """`/v1/providers`: the providers' CRUD (`providers.api.ProviderViewSet`) and their health,
    which routing keeps (breakers and health samples of the deployments)."""

    action_verbs = {"health": "view"}

    @extend_schema(responses=ProviderHealthSerializer, summary="Breaker state and recent health of a provider's deployments")
    @action(detail=True, methods=["get"])
    def health(self, request, pk=None):
        return Response(ProviderHealthSerializer(provider_health(provider=self.get_object())).data)
