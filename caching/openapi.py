"""Schema descriptions of `GET /v1/cache/stats` and `DELETE /v1/cache` (plain async views)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers

from kernel.openapi import ApiDescription

TENANT_PARAMETER = OpenApiParameter(
    "tenant", OpenApiTypes.STR,
    description="With a staff token: the tenant's slug (its user needs `caching.view_cachepolicy` to read, "
    "`caching.change_cachepolicy` to clear). A tenant key may only name its own tenant.",
)


class CacheStats(serializers.Serializer):
    object = serializers.ChoiceField(choices=["cache.stats"])
    tenant = serializers.CharField()
    entries = serializers.IntegerField()
    hits = serializers.IntegerField()
    semantic_hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    hit_rate = serializers.FloatField(allow_null=True)
    saved_cost_usd = serializers.CharField(help_text="USD, as a decimal string.")
    semantic_entries = serializers.IntegerField(help_text="In the answering process's index.")


class CacheStatsList(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = CacheStats(many=True)


class CacheCleared(serializers.Serializer):
    object = serializers.ChoiceField(choices=["cache.cleared"])
    tenant = serializers.CharField()
    entries = serializers.IntegerField()
    semantic_entries = serializers.IntegerField()


class CacheStatsDoc(ApiDescription):
    error_statuses = (400, 401, 403, 405)

    @extend_schema(
        operation_id="cache_stats", tags=["tenant API"], parameters=[TENANT_PARAMETER],
        summary="Cache statistics: the key's tenant, or (staff token) one or every tenant (docs/cache.md)",
        responses=PolymorphicProxySerializer(
            component_name="CacheStatsAnswer", serializers=[CacheStats, CacheStatsList], resource_type_field_name=None,
        ),
    )
    def get(self, request):
        raise NotImplementedError  # never routed: describes caching.api.stats


class CacheClearDoc(ApiDescription):
    error_statuses = (400, 401, 403, 405)

    @extend_schema(
        operation_id="cache_clear", tags=["tenant API"], parameters=[TENANT_PARAMETER], responses=CacheCleared,
        summary="Clear the key's tenant's cache entries, or (staff token) the named tenant's",
    )
    def delete(self, request):
        raise NotImplementedError  # never routed: describes caching.api.clear
