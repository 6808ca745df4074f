"""Stored Responses API answers (`StoredResponse`): written, read and deleted per tenant.

Kept content like `UsageContent`: only for a tenant with `keep_content`, and gone after its
`content_retention_days` (deleted by `content_retention_enforce`; a read does not find one that
is older, whether or not the deletion has run yet). A response id of another tenant is not found,
the same as a missing one. Sync functions, for `kernel.db_executor.db_call`.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from accounting.models import StoredResponse


def stored_response_create(
    *, tenant_id: int, response_id: str, context: list, input_items: list, response: dict
) -> None:
    StoredResponse.objects.create(
        tenant_id=tenant_id, response_id=response_id, context=context, input_items=input_items,
        response=response,
    )


def stored_response_get(*, tenant_id: int, response_id: str) -> StoredResponse | None:
    stored = (
        StoredResponse.objects.select_related("tenant")
        .filter(tenant_id=tenant_id, response_id=response_id).first()
    )
    if stored is None:
        return None
    if stored.created_at < timezone.now() - timedelta(days=stored.tenant.content_retention_days):
        return None  # past retention: the hourly deletion has not reached it yet
    return stored


def stored_response_delete(*, tenant_id: int, response_id: str) -> bool:
    """Whether there was one to delete."""
    if stored_response_get(tenant_id=tenant_id, response_id=response_id) is None:
        return False
    return StoredResponse.objects.filter(tenant_id=tenant_id, response_id=response_id).delete()[0] > 0
