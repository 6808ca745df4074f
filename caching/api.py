"""`GET /v1/cache/stats` and `DELETE /v1/cache`. Parse, call, serialize.

A tenant API key sees and clears only its own tenant's entries: the store is namespaced by
tenant, and the tenant comes from the key. An operator's staff token (`operators` app) names the
tenant with `?tenant=<slug>`; without it, `GET` lists every tenant, and `DELETE` refuses. The
token's user needs the permission the admin's cache pages need: `caching.view_cachepolicy` to read,
`caching.change_cachepolicy` to clear. Every operator clear is written to the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import AuthenticationFailed as StaffTokenRefused
from rest_framework.exceptions import Throttled

from accounting.auth import api_key_authenticate
from accounting.models import Tenant
from caching.services import cache_clear, cache_stats
from kernel.credentials import bearer_token
from kernel.auth_throttle import auth_throttle_check
from kernel.errors import (
    AuthenticationFailed, AuthThrottled, GatewayError, InvalidRequest, PermissionDenied, error_response,
)
from kernel.http import allow_methods, client_address


READ_PERMISSION = "caching.view_cachepolicy"
CLEAR_PERMISSION = "caching.change_cachepolicy"


@dataclass(frozen=True)
class Caller:
    tenants: list[tuple[int, str]]  # (id, slug) of the tenants this call is about
    staff_user: object = None


async def _caller(request: HttpRequest, *, all_allowed: bool, permission: str) -> Caller:
    named = (request.GET.get("tenant") or "").strip()
    # The key may be a tenant's or a staff token: a refusal is counted once, by the staff token's
    # check (`operators.authentication`), and not when the staff token is good.
    auth_throttle_check(client=client_address(request), door="api")
    try:
        auth = await api_key_authenticate(raw_key=bearer_token(request.headers), client=None)
    except AuthenticationFailed:
        user = await sync_to_async(_staff_user)(request, permission=permission)
        if user is None:
            raise
        return Caller(tenants=await sync_to_async(_tenants)(named, all_allowed=all_allowed), staff_user=user)
    if named and named != auth.tenant_slug:
        raise PermissionDenied("A tenant API key reaches only its own tenant's cache.", param="tenant",
                               code="permission_denied")
    return Caller(tenants=[(auth.tenant_id, auth.tenant_slug)])


def _staff_user(request: HttpRequest, *, permission: str):
    """The active staff user of a valid staff token, else None; a 403 without the permission."""
    from operators.authentication import StaffTokenAuthentication
    from operators.permissions import permission_denied_message

    try:
        found = StaffTokenAuthentication().authenticate(request)
    except StaffTokenRefused:
        return None
    except Throttled as exc:  # this refusal took the address past the limit of failures
        raise AuthThrottled(str(exc.detail), headers={"retry-after": str(exc.wait or 1)}) from None
    if found is None or not found[0].is_staff:
        return None
    if not found[0].has_perm(permission):
        raise PermissionDenied(permission_denied_message(permission), code="permission_denied")
    return found[0]


def _tenants(named: str, *, all_allowed: bool) -> list[tuple[int, str]]:
    if named:
        tenant = Tenant.objects.filter(slug=named).values_list("pk", "slug").first()
        if tenant is None:
            raise InvalidRequest(f"No tenant '{named}'.", param="tenant", code="not_found")
        return [tenant]
    if not all_allowed:
        raise InvalidRequest("Name the tenant whose cache to clear: ?tenant=<slug>.", param="tenant")
    return list(Tenant.objects.order_by("slug").values_list("pk", "slug"))


@allow_methods("GET")
async def stats(request: HttpRequest) -> HttpResponse:
    try:
        caller = await _caller(request, all_allowed=True, permission=READ_PERMISSION)
    except GatewayError as exc:
        return error_response(exc)
    entries = [
        {"object": "cache.stats", "tenant": slug, **await cache_stats(tenant_id=tenant_id)}
        for tenant_id, slug in caller.tenants
    ]
    if caller.staff_user is not None and not request.GET.get("tenant"):
        return JsonResponse({"object": "list", "data": entries})
    return JsonResponse(entries[0])


@csrf_exempt
@allow_methods("DELETE")
async def clear(request: HttpRequest) -> HttpResponse:
    try:
        caller = await _caller(request, all_allowed=False, permission=CLEAR_PERMISSION)
    except GatewayError as exc:
        return error_response(exc)
    [(tenant_id, slug)] = caller.tenants
    cleared = await cache_clear(tenant_id=tenant_id)
    if caller.staff_user is not None:
        await sync_to_async(_audit)(tenant_id=tenant_id, user=caller.staff_user)
    return JsonResponse({"object": "cache.cleared", "tenant": slug, **cleared})


def _audit(*, tenant_id: int, user) -> None:
    from audit.services import audit_record

    audit_record(action="changed", obj=Tenant.objects.get(pk=tenant_id), via="api", user=user,
                 changed_fields=["cache"])
