"""Writes of the accounting app: tenants, their API keys, usage records."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from accounting.budgets import BudgetLimit, Reservation, Settlement, settlement_changes
from accounting.models import StoredResponse, Tenant, TenantApiKey, UsageContent, UsageRecord, UsageRecordChange
from accounting.rollups import record_snapshot
from accounting.statements import Batched, dialect, insert_fields
from kernel.credentials import api_key_hash

API_KEY_PREFIX = "sk-gw-"
VISIBLE_PREFIX_LENGTH = 12


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


async def usage_record_create(
    *, fields: dict, budgets: tuple[BudgetLimit, ...] = (), reservation: Reservation | None = None
) -> tuple[int, list[int]]:
    """Write a request's UsageRecord (with its kept content, `fields["content"]`) and settle its
    budgets: its reservations released and its cost added to the period row of each of its budgets
    (created if missing), together, so that a period's spend is always the sum of its records.
    Returns the record's id and the ids of the budget alerts newly raised by its write.

    The records that arrive while one write is on the wire are written together in the next
    (`statements.Batched`): one statement on PostgreSQL, one transaction on SQLite. A record whose
    `request_id` is written already fails with Django's IntegrityError, and nothing of it is written.
    """
    return await _writes(RecordWrite(fields=fields, budgets=budgets, reservation=reservation))


async def usage_records_create(writes: list[RecordWrite]) -> tuple[list[int], list[int]]:
    """Several records at once (`usage_record_create`'s batch): their ids in the order of
    `writes` and the ids of the alerts newly raised."""
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


async def _writes_run(writes: list[RecordWrite]) -> list[tuple[int, list[int]]]:
    """One batch: each record's id; the batch's new alerts go with its first record."""
    ids, alert_ids = await usage_records_create(writes)
    return [(record_id, alert_ids if index == 0 else []) for index, record_id in enumerate(ids)]


_writes: Batched[RecordWrite, tuple[int, list[int]]] = Batched(_writes_run)


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


CORRECTABLE = ("prompt_tokens", "completion_tokens")


@transaction.atomic
def usage_record_correct(*, record_id: int, **fields: int) -> UsageRecord:
    """Correct a record's token counts after it was written (a provider's late usage report, a
    recount): the record changes and a `UsageRecordChange` with its values before and after is
    written in the same transaction, for the rollups to apply as a difference. Costs and budgets
    are not moved: a period's spend stays the sum of its records' costs."""
    unknown = set(fields) - set(CORRECTABLE)
    if unknown:
        raise ValueError(f"Only {', '.join(CORRECTABLE)} can be corrected, not {', '.join(sorted(unknown))}.")
    if any(not isinstance(value, int) or value < 0 for value in fields.values()):
        raise ValueError("Token counts are whole numbers, zero or more.")
    record = UsageRecord.objects.select_for_update().get(pk=record_id)
    before = record_snapshot(record)
    for name, value in fields.items():
        setattr(record, name, value)
    record.save(update_fields=list(fields))
    UsageRecordChange.objects.create(record_id=record.pk, before=before, after=record_snapshot(record))
    return record


def content_retention_enforce(*, now=None) -> int:
    """Delete each tenant's kept content older than its `content_retention_days`; returns rows deleted.

    Also deletes what a tenant kept before it turned `keep_content` off, on the same schedule;
    stored Responses API answers (`StoredResponse`) are kept content too.
    """
    now = now or timezone.now()
    deleted = 0
    for tenant_id, days in Tenant.objects.values_list("pk", "content_retention_days"):
        cutoff = now - timedelta(days=days)
        deleted += UsageContent.objects.filter(tenant_id=tenant_id, created_at__lt=cutoff).delete()[0]
        deleted += StoredResponse.objects.filter(tenant_id=tenant_id, created_at__lt=cutoff).delete()[0]
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
