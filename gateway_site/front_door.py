"""`/`: the front door. A signed-in user finds every page they may open from here; an anonymous
visitor finds the sign-in link and where the API is.

What a user may open is what the pages themselves allow (`accounting.views`): a member sees their
tenant's dashboards, request logs, feedback and the playground; staff with the usage permission
see every tenant, and staff the admin. The links are paths; each page checks access again.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from accounting.models import Tenant, TenantMembership
from accounting.views import sees_every_tenant

TENANTS_SHOWN = 50  # an operator's list; the rest are on /dashboard/


@dataclass(frozen=True)
class TenantDoors:
    tenant: Tenant
    member: bool  # the user's own tenant (its playground, keys and members pages)


def tenant_doors(user) -> list[TenantDoors]:
    own = {m.tenant_id for m in TenantMembership.objects.filter(user=user, tenant__is_active=True)}
    tenants = Tenant.objects.filter(pk__in=own)
    if sees_every_tenant(user):
        tenants = Tenant.objects.all()
    return [TenantDoors(tenant=t, member=t.pk in own) for t in tenants.order_by("slug")[:TENANTS_SHOWN]]


@require_safe
def front_door(request: HttpRequest) -> HttpResponse:
    user = request.user
    doors = tenant_doors(user) if user.is_authenticated else []
    return render(request, "front_door.html", {
        "api_base": request.build_absolute_uri("/v1"),
        "doors": doors,
        "member": any(door.member for door in doors),
        "operator": user.is_authenticated and sees_every_tenant(user),
        "more_tenants": len(doors) == TENANTS_SHOWN,
    })
