"""Operator API for providers, their models and keys: `/v1/providers`, `/v1/provider-models`,
`/v1/provider-keys`, and `GET /v1/providers/{id}/health`. Staff with the model's permission (see
`operators.permissions`).

A provider key's secret is write-only: it is encrypted on the way in (`providers.services`) and no
response ever carries it. Sending a new `secret` to an existing key is a rotation.
"""

from __future__ import annotations

from types import SimpleNamespace

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from operators.api import OperatorViewSet
from providers.models import Provider, ProviderKey, ProviderModel
from providers.services import provider_key_save

class ProviderSerializer(serializers.ModelSerializer):
    timeout_seconds = serializers.FloatField(
        required=False, allow_null=True, min_value=0.1, max_value=3600,
        help_text="Read timeout for this provider; null uses the default.",
    )
    unsupported_params = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=100,
        help_text="Request parameters this provider does not accept (see docs/providers.md).",
    )

    class Meta:
        model = Provider
        fields = [
            "id", "name", "type", "api_base", "enabled", "priority", "timeout_seconds",
            "unsupported_params", "unsupported_param_policy", "created_at", "updated_at",
        ]


class ProviderModelSerializer(serializers.ModelSerializer):
    capabilities = serializers.ListField(
        child=serializers.CharField(max_length=50), required=False, max_length=50,
        help_text='e.g. ["streaming", "tools", "vision"]',
    )

    class Meta:
        model = ProviderModel
        fields = [
            "id", "provider", "alias", "upstream_model", "mode", "input_price_per_million",
            "output_price_per_million", "cached_input_price_per_million", "context_window",
            "max_output_tokens", "capabilities", "enabled", "created_at",
        ]
        extra_kwargs = {
            name: {"min_value": 0}
            for name in ("input_price_per_million", "output_price_per_million", "cached_input_price_per_million")
        }


class ProviderKeySerializer(serializers.ModelSerializer):
    secret = serializers.CharField(
        write_only=True, max_length=4096, trim_whitespace=True,
        help_text="The provider's API key. Stored encrypted, never returned. Required on create; "
        "on update a new secret rotates the key, leaving it out keeps the stored one.",
    )

    class Meta:
        model = ProviderKey
        fields = ["id", "provider", "name", "secret", "source", "enabled", "created_at", "updated_at"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance is not None:
            self.fields["secret"].required = False

    def create(self, validated_data: dict) -> ProviderKey:
        secret = validated_data.pop("secret")
        return provider_key_save(key=ProviderKey(**validated_data), secret=secret)

    def update(self, instance: ProviderKey, validated_data: dict) -> ProviderKey:
        secret = validated_data.pop("secret", None)
        for name, value in validated_data.items():
            setattr(instance, name, value)
        return provider_key_save(key=instance, secret=secret)


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
    from routing.explain import provider_health_rows  # routing builds on providers, not the reverse

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


class ProviderViewSet(OperatorViewSet):
    queryset = Provider.objects.all()
    serializer_class = ProviderSerializer
    action_verbs = {"health": "view"}

    @extend_schema(responses=ProviderHealthSerializer, summary="Breaker state and recent health of a provider's deployments")
    @action(detail=True, methods=["get"])
    def health(self, request, pk=None):
        return Response(ProviderHealthSerializer(provider_health(provider=self.get_object())).data)


class ProviderModelViewSet(OperatorViewSet):
    queryset = ProviderModel.objects.select_related("provider")
    serializer_class = ProviderModelSerializer


class ProviderKeyViewSet(OperatorViewSet):
    queryset = ProviderKey.objects.select_related("provider")
    serializer_class = ProviderKeySerializer
