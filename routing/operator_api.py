"""Operator API for routing: `/v1/routing-rules` and `/v1/route-groups` (with their deployments).

Staff with the model's permission (see `operators.permissions`). The tenant-facing routing views are in `routing.api`.
"""

from __future__ import annotations

from django.db import transaction
from rest_framework import serializers

from operators.api import OperatorViewSet
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
            "breaker_failure_threshold", "breaker_cooldown_seconds", "deployments", "created_at", "updated_at",
        ]
        extra_kwargs = {
            "retries": {"max_value": 10},
            "attempt_timeout_seconds": {"min_value": 0.1, "max_value": 3600},
            "total_timeout_seconds": {"min_value": 0.1, "max_value": 3600},
            "breaker_failure_threshold": {"min_value": 1, "max_value": 1000},
            "breaker_cooldown_seconds": {"min_value": 0.1, "max_value": 86400},
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
