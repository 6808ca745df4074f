"""Schema description of `GET /v1/usage`, a plain async view (see `kernel.openapi`)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers

from accounting.rollups import GROUP_BY_DIMENSION
from kernel.openapi import ApiDescription


class UsageEntry(serializers.Serializer):
    group = serializers.CharField(help_text="The day (YYYY-MM-DD), model, key id or route.")
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=16, decimal_places=8, coerce_to_string=True)
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p95_ms = serializers.FloatField(allow_null=True)
    latency_p99_ms = serializers.FloatField(allow_null=True)
    key_name = serializers.CharField(required=False, allow_null=True, help_text="With group_by=key.")
    key_prefix = serializers.CharField(required=False, allow_null=True, help_text="With group_by=key.")


class Usage(serializers.Serializer):
    object = serializers.ChoiceField(choices=["usage"])
    start = serializers.DateTimeField()
    end = serializers.DateTimeField(help_text="Exclusive.")
    group_by = serializers.ChoiceField(choices=sorted(GROUP_BY_DIMENSION))
    data = UsageEntry(many=True)


class UsageDoc(ApiDescription):
    error_statuses = (400, 401)

    @extend_schema(
        operation_id="usage_retrieve", tags=["tenant API"], responses=Usage,
        summary="The calling tenant's usage, from the rollups (docs/usage.md)",
        parameters=[
            OpenApiParameter("start", OpenApiTypes.STR, description="ISO 8601 date or datetime (UTC); default: end - 30 days."),
            OpenApiParameter("end", OpenApiTypes.STR, description="ISO 8601, exclusive; default: tomorrow 00:00 UTC."),
            OpenApiParameter("group_by", OpenApiTypes.STR, enum=sorted(GROUP_BY_DIMENSION), description="Default: day."),
        ],
    )
    def get(self, request):
        raise NotImplementedError  # never routed: describes accounting.api.usage
