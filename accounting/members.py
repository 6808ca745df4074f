"""Tenant members (dashboard users) acting for their tenant, e.g. in the chat playground."""

from __future__ import annotations

from asgiref.sync import sync_to_async

from accounting.auth import ApiKeyContext
from accounting.models import TenantMembership


async def member_context(*, user) -> ApiKeyContext | None:
    """The tenant context of a logged-in member, as if it were a key with every model allowed.

    Its `key_id` is 0: usage is recorded for the tenant without a key, and only the tenant's own
    limits and budgets apply.
    """
    if user is None or not user.is_authenticated:
        return None
    membership = await sync_to_async(
        lambda: TenantMembership.objects.select_related("tenant").filter(user_id=user.pk).first()
    )()
    if membership is None or not membership.tenant.is_active:
        return None
    return ApiKeyContext(
        key_id=0,
        tenant_id=membership.tenant_id,
        tenant_slug=membership.tenant.slug,
        allowed_models=frozenset(),
        expires_at=None,
        revoked=False,
        tenant_active=True,
        keep_content=membership.tenant.keep_content,
    )
