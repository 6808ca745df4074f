"""Operator API for providers, their models and keys: `/v1/providers`, `/v1/provider-models`,
`/v1/provider-keys` (`GET /v1/providers/{id}/health` is routing's: `routing.operator_api`). Staff
with the model's permission (see `operators.permissions`).

A provider key's secret is write-only: it is encrypted on the way in (`providers.services`) and no
response ever carries it. Sending a new `secret` to an existing key is a rotation.
"""

from __future__ import annotations

from rest_framework import serializers

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
            "max_output_tokens", "capabilities", "price_per_image", "image_prices", "price_per_audio_minute",
            "price_per_million_characters", "price_per_thousand_searches", "enabled", "created_at",
        ]
        extra_kwargs = {
            name: {"min_value": 0}
            for name in ("input_price_per_million", "output_price_per_million", "cached_input_price_per_million",
                         "price_per_image", "price_per_audio_minute", "price_per_million_characters",
                         "price_per_thousand_searches")
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


class ProviderViewSet(OperatorViewSet):
    queryset = Provider.objects.all()
    serializer_class = ProviderSerializer


class ProviderModelViewSet(OperatorViewSet):
    queryset = ProviderModel.objects.select_related("provider")
    serializer_class = ProviderModelSerializer


class ProviderKeyViewSet(OperatorViewSet):
    queryset = ProviderKey.objects.select_related("provider")
    serializer_class = ProviderKeySerializer
