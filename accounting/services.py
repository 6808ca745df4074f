"""Writes of the accounting app: tenants, their API keys, usage records."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from accounting.budgets import BudgetLimit, Reservation, Settlement, settlement_changes
from accounting.models import Tenant, TenantApiKey
from accounting.statements import dialect, insert_fields

API_KEY_PREFIX = "sk-gw-"
VISIBLE_PREFIX_LENGTH = 12


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()


def tenant_create(*, slug: str, name: str = "") -> Tenant:
    return Tenant.objects.create(slug=slug, name=name or slug)


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str = "default",
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[TenantApiKey, str]:
    """Create a key and return it with its plaintext, which is never available again."""
    raw_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = TenantApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=raw_key[:VISIBLE_PREFIX_LENGTH],
        hashed_key=api_key_hash(raw_key),
        allowed_models=sorted(set(allowed_models or [])),
        expires_at=expires_at,
    )
    return key, raw_key


def api_key_revoke(*, key: TenantApiKey) -> None:
    key.revoked = True
    key.save(update_fields=["revoked"])  # save(), not update(): the signal clears auth caches


@dataclass
class RecordWrite:
    """One request's UsageRecord fields (`content` among them for a tenant that keeps content),
    with the budgets and the reservation its cost settles."""

    fields: dict
    budgets: tuple[BudgetLimit, ...] = ()
    reservation: Reservation | None = None


async def usage_records_create(writes: list[RecordWrite]) -> tuple[list[int], list[int]]:
    """Write requests' UsageRecords (with their kept content) and settle their budgets, at once:
    one statement on PostgreSQL, one transaction on SQLite (`accounting.statements`). Returns the
    records' ids in the order of `writes` and the ids of the budget alerts newly raised.

    Each request's reservations are released and its cost added to the period row of each of its
    budgets (created if missing), together with the records that justify it, so a period's spend
    is always the sum of its records. A record whose `request_id` is written already fails the
    whole group with Django's IntegrityError, and nothing is written.
    """
    records, contents, settlements = [], [], []
    for write in writes:
        fields = _record_fields(write.fields)
        records.append(fields)
        if (content := write.fields.get("content")) is not None:
            contents.append((fields["request_id"], fields["tenant_id"], fields["created_at"],
                             content.get("messages", []), content.get("completion", "")))
        settlements.append(Settlement(
            budgets=write.budgets, reservation=write.reservation, cost=fields["cost_usd"], now=fields["created_at"],
        ))
    releases, spend, lines = settlement_changes(settlements)
    ids, alert_ids = await dialect().write(records, contents, releases, spend, lines, timezone.now())
    return [ids[uuid.UUID(str(write.fields["request_id"]))] for write in writes], alert_ids


async def usage_record_create(
    *, fields: dict, budgets: tuple[BudgetLimit, ...] = (), reservation: Reservation | None = None
) -> tuple[int, list[int]]:
    """One request's `usage_records_create`: its record's id and the alerts newly raised."""
    [record_id], alert_ids = await usage_records_create(
        [RecordWrite(fields=fields, budgets=budgets, reservation=reservation)]
    )
    return record_id, alert_ids


def _record_fields(given: dict) -> dict:
    """Every insert field's value by attname: the one given, else the field's default."""
    fields = {}
    for field in insert_fields():
        if field.attname in given:
            fields[field.attname] = given[field.attname]
        elif field.name in given:
            fields[field.attname] = given[field.name]
        else:
            fields[field.attname] = field.get_default()
    return fields


def content_retention_enforce(*, now=None) -> int:
    """Delete each tenant's kept content older than its `content_retention_days`; returns rows deleted.

    Also deletes what a tenant kept before it turned `keep_content` off, on the same schedule.
    """
    now = now or timezone.now()
    deleted = 0
    for tenant_id, days in Tenant.objects.values_list("pk", "content_retention_days"):
        cutoff = now - timedelta(days=days)
        deleted += UsageContent.objects.filter(tenant_id=tenant_id, created_at__lt=cutoff).delete()[0]
    return deleted


@transaction.atomic
def api_key_rotate(*, key: TenantApiKey) -> str:
    """Give a key a new secret and return its plaintext; the old one stops working at once.

    The key keeps its id, so its budgets, rate limits, routing rules and usage stay attached.
    """
    raw_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key.prefix = raw_key[:VISIBLE_PREFIX_LENGTH]
    key.hashed_key = api_key_hash(raw_key)
    key.save(update_fields=["prefix", "hashed_key"])  # save(): the signal clears auth caches
    return raw_key
