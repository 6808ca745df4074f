"""`GET /v1/usage`: the calling tenant's usage, read from the rollups. Parse, call, serialize.

The numbers come from UsageRollup rows, never from raw records, so a call costs a few hundred
rows at most. Rollups of the current hour and day are recomputed every minute by beat, so the
newest requests show up within about a minute; the view does not recompute on read (that would
make a GET write every tenant's rows and let any client trigger the heaviest query we have).

Below it, the operator API's viewsets for tenants, tenant keys and budgets (staff tokens and model
permissions; see `operators.api` and docs/operator-api.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from accounting.auth import request_authenticate
from accounting.models import Budget, Tenant, TenantApiKey
from accounting.rollups import (
    GROUP_BY_DIMENSION,
    STEPS,
    Granularity,
    bucket_floor,
    usage_summarize,
)
from accounting.services import api_key_create, api_key_revoke, api_key_rotate
from kernel.db_executor import db_call
from kernel.errors import GatewayError, InvalidRequest, error_response
from kernel.http import allow_methods
from operators.api import OperatorViewSet

DEFAULT_GROUP_BY = "day"
DEFAULT_DAYS = 30
YEARS = (1970, 9998)  # keeps rounding to buckets and the default range clear of datetime's limits
COST_QUANTUM = Decimal("0.00000001")  # the 8 places of UsageRecord.cost_usd


@dataclass(frozen=True)
class UsageQuery:
    granularity: str
    start: datetime
    end: datetime
    group_by: str


def _bound(params, name: str) -> datetime | None:
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or not YEARS[0] <= value.year <= YEARS[1]:
        raise InvalidRequest(
            f"'{name}' must be an ISO 8601 date or datetime, e.g. 2026-01-31 or 2026-01-31T12:00:00Z.",
            param=name,
        )
    return value.replace(tzinfo=dt_timezone.utc) if value.tzinfo is None else value.astimezone(dt_timezone.utc)


def _round_up(granularity: str, when: datetime) -> datetime:
    start = bucket_floor(granularity=granularity, when=when)
    return start if start == when else start + STEPS[granularity]


def usage_query_parse(params, *, now: datetime) -> UsageQuery:
    """Dates are UTC midnights and `end` is exclusive; by default the last 30 days, today included.

    A range of whole days reads daily rollups; a bound inside a day reads hourly ones, and is
    rounded outwards to the hour. The answer's `start` and `end` are the range actually covered.
    """
    group_by = params.get("group_by") or DEFAULT_GROUP_BY
    if group_by not in GROUP_BY_DIMENSION:
        raise InvalidRequest(f"'group_by' must be one of {', '.join(GROUP_BY_DIMENSION)}.", param="group_by")
    start, end = _bound(params, "start"), _bound(params, "end")
    end = end or bucket_floor(granularity=Granularity.DAY, when=now) + timedelta(days=1)
    start = start or end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise InvalidRequest("'start' must be before 'end' (end is exclusive).", param="start")
    day_aligned = all(bucket_floor(granularity=Granularity.DAY, when=bound) == bound for bound in (start, end))
    granularity = Granularity.DAY if day_aligned else Granularity.HOUR
    return UsageQuery(
        granularity=granularity,
        start=bucket_floor(granularity=granularity, when=start),
        end=_round_up(granularity, end),
        group_by=group_by,
    )


def _serialize(entry: dict) -> dict:
    latency = {
        name: None if entry[name] is None else round(entry[name], 3)
        for name in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
    }
    return {**entry, **latency, "cost_usd": str(entry["cost_usd"].quantize(COST_QUANTUM))}


@allow_methods("GET")
async def usage(request: HttpRequest) -> HttpResponse:
    try:
        auth = await request_authenticate(request)
        query = usage_query_parse(request.GET, now=timezone.now())
    except GatewayError as exc:
        return error_response(exc)
    data = await db_call(usage_summarize, tenant_id=auth.tenant_id, **asdict(query))
    return JsonResponse({
        "object": "usage",
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "group_by": query.group_by,
        "data": [_serialize(entry) for entry in data],
    })


# --- operator API: tenants, tenant keys, budgets (staff tokens; see operators.api) ---------------

class TenantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["id", "slug", "name", "is_active", "keep_content", "content_retention_days", "created_at"]
        extra_kwargs = {"content_retention_days": {"min_value": 1, "max_value": 36500}}


class TenantApiKeySerializer(serializers.ModelSerializer):
    """A tenant key without its secret: only the visible prefix (`sk-gw-…`) is ever shown again."""

    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=1000,
        help_text="Model aliases this key may use; empty means every model.",
    )

    class Meta:
        model = TenantApiKey
        fields = ["id", "tenant", "name", "prefix", "allowed_models", "expires_at", "revoked", "last_used_at", "created_at"]
        read_only_fields = ["prefix", "revoked", "last_used_at", "created_at"]

    def validate_tenant(self, tenant: Tenant) -> Tenant:
        if self.instance is not None and tenant.pk != self.instance.tenant_id:
            raise serializers.ValidationError("A key cannot move to another tenant.")
        return tenant

    def validate_allowed_models(self, value: list[str]) -> list[str]:
        return sorted(set(value))

    def create(self, validated_data: dict) -> TenantApiKey:
        key, raw_key = api_key_create(**validated_data)
        key.plaintext = raw_key
        return key


class TenantApiKeyWithSecretSerializer(TenantApiKeySerializer):
    key = serializers.CharField(
        read_only=True, source="plaintext",
        help_text="The key itself: shown in this response only, never again.",
    )

    class Meta(TenantApiKeySerializer.Meta):
        fields = [*TenantApiKeySerializer.Meta.fields, "key"]


class BudgetSerializer(serializers.ModelSerializer):
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000), required=False, max_length=20,
        help_text="Percentages of the amount, e.g. [50, 80, 100].",
    )

    class Meta:
        model = Budget
        fields = [
            "id", "tenant", "api_key", "amount_usd", "period", "hard", "alert_thresholds",
            "alert_webhook", "alert_email", "enabled", "created_at", "updated_at",
        ]
        extra_kwargs = {"amount_usd": {"min_value": 0}}
        validators: list = []  # the scope's uniqueness is checked in validate() and by the database

    def validate(self, data: dict) -> dict:
        tenant = data.get("tenant", getattr(self.instance, "tenant", None))
        api_key = data.get("api_key", getattr(self.instance, "api_key", None))
        if api_key is not None and api_key.tenant_id != tenant.pk:
            raise serializers.ValidationError({"api_key": "This key belongs to another tenant."})
        period = data.get("period", getattr(self.instance, "period", None))
        taken = Budget.objects.filter(tenant=tenant, api_key=api_key, period=period)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise serializers.ValidationError({"period": "This tenant or key already has a budget for this period."})
        return data


class TenantViewSet(OperatorViewSet):
    queryset = Tenant.objects.all()
    serializer_class = TenantSerializer


class TenantApiKeyViewSet(OperatorViewSet):
    """Create returns the plaintext key once (`key`); `revoke` and `rotate` are POST actions."""

    queryset = TenantApiKey.objects.select_related("tenant")
    serializer_class = TenantApiKeySerializer
    # Both change the key; rotate also answers with a new secret, so a viewer may call neither.
    action_verbs = {"revoke": "change", "rotate": "change"}

    @extend_schema(responses={201: TenantApiKeyWithSecretSerializer})
    def create(self, request, *args, **kwargs):
        return super().create(request, *args, **kwargs)

    def get_serializer_class(self):
        return TenantApiKeyWithSecretSerializer if self.action in ("create", "rotate") else TenantApiKeySerializer

    @extend_schema(request=None, responses=TenantApiKeySerializer, summary="Revoke a key (it stops working at once)")
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        key = self.get_object()
        with transaction.atomic():
            api_key_revoke(key=key)
            self.audit("revoked", key, changed_fields=["revoked"])
        return Response(TenantApiKeySerializer(key).data)

    @extend_schema(request=None, responses=TenantApiKeyWithSecretSerializer,
                   summary="Give a key a new secret, returned once; the old one stops working at once")
    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None):
        key = self.get_object()
        with transaction.atomic():
            key.plaintext = api_key_rotate(key=key)
            self.audit("rotated", key, changed_fields=["prefix"])
        return Response(TenantApiKeyWithSecretSerializer(key).data)


class BudgetViewSet(OperatorViewSet):
    queryset = Budget.objects.select_related("tenant", "api_key")
    serializer_class = BudgetSerializer
