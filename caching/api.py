"""`GET /v1/cache/stats` and `DELETE /v1/cache` for the calling tenant. Parse, call, serialize.

A tenant API key sees and clears only its own tenant's entries: the store is namespaced by
tenant, and the tenant comes from the key, never from the request.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounting.auth import api_key_authenticate, bearer_token
from caching.services import cache_clear, cache_stats
from gateway_site.errors import GatewayError, error_response
from gateway_site.http import allow_methods


@allow_methods("GET")
async def stats(request: HttpRequest) -> HttpResponse:
    try:
        auth = await api_key_authenticate(raw_key=bearer_token(request.headers))
    except GatewayError as exc:
        return error_response(exc)
    return JsonResponse({"object": "cache.stats", "tenant": auth.tenant_slug, **await cache_stats(tenant_id=auth.tenant_id)})


@csrf_exempt
@allow_methods("DELETE")
async def clear(request: HttpRequest) -> HttpResponse:
    try:
        auth = await api_key_authenticate(raw_key=bearer_token(request.headers))
    except GatewayError as exc:
        return error_response(exc)
    cleared = await cache_clear(tenant_id=auth.tenant_id)
    return JsonResponse({"object": "cache.cleared", "tenant": auth.tenant_slug, **cleared})
