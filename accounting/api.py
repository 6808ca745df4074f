"""`GET /v1/usage`: the calling tenant's usage, read from the rollups. Parse, call, serialize.

The numbers come from UsageRollup rows, never from raw records, so a call costs a few hundred
rows at most. Rollups of the current hour and day are recomputed every minute by beat, so the
newest requests show up within about a minute; the view does not recompute on read (that would
make a GET write every tenant's rows and let any client trigger the heaviest query we have).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from accounting.auth import api_key_authenticate, bearer_token
from accounting.rollups import (
    GROUP_BY_DIMENSION,
    STEPS,
    Granularity,
    bucket_floor,
    usage_summarize,
)
from gateway_site.errors import GatewayError, InvalidRequest, error_response
from gateway_site.http import allow_methods

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
        for name in ("latency_p50_ms", "latency_p95_ms")
    }
    return {**entry, **latency, "cost_usd": str(entry["cost_usd"].quantize(COST_QUANTUM))}


@allow_methods("GET")
async def usage(request: HttpRequest) -> HttpResponse:
    try:
        auth = await api_key_authenticate(raw_key=bearer_token(request.headers))
        query = usage_query_parse(request.GET, now=timezone.now())
    except GatewayError as exc:
        return error_response(exc)
    data = await sync_to_async(usage_summarize)(tenant_id=auth.tenant_id, **asdict(query))
    return JsonResponse({
        "object": "usage",
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "group_by": query.group_by,
        "data": [_serialize(entry) for entry in data],
    })
