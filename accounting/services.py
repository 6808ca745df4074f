"""Writes of the accounting app: tenants, their API keys, usage records."""

from __future__ import annotations

import functools
import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import orjson

from django.db import DataError, connection, transaction
from django.utils import timezone

from accounting.budgets import (
    BudgetLimit, Reservation, Settlement, budgets_settle, period_row_gone, records_insert_settle, records_statement,
)
from accounting.models import Tenant, TenantApiKey, UsageContent, UsageRecord
from gateway_site import db_async

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


def usage_record_commit(
    *,
    fields: dict,
    budgets: tuple[BudgetLimit, ...] = (),
    reservation: Reservation | None = None,
    on_alert: Callable[[int], None] | None = None,
) -> UsageRecord:
    """Write a request's UsageRecord and settle its budgets in one transaction."""
    [record] = usage_records_commit(
        [RecordWrite(fields=fields, budgets=budgets, reservation=reservation)], on_alert=on_alert
    )
    return record


def usage_records_commit(
    writes: list[RecordWrite], *, on_alert: Callable[[int], None] | None = None
) -> list[UsageRecord]:
    """Write requests' UsageRecords and settle their budgets in one transaction (a group commit:
    one INSERT for the records, one UPDATE per budget period for their settlements).

    Spend moves only together with the records that justify it, so a period's spend is always
    the sum of its records. New alerts are handed to `on_alert` once the transaction commits.
    On PostgreSQL, records without kept content whose settlement touches one period row at most
    (the hot path's common case) are one statement (`budgets.records_insert_settle`).
    """
    contents = [write.fields.get("content") for write in writes]
    records, settlements = _records_settlements(writes)
    if connection.vendor == "postgresql" and all(content is None for content in contents):
        written = records_insert_settle(_records_insert(records), settlements)
        if written is not None:
            _alerts_hand_over(_records_written(records, written), on_alert)
            return records
    return _records_commit(records, contents, settlements, on_alert)


async def usage_records_commit_async(
    writes: list[RecordWrite], *, on_alert: Callable[[list[int]], Awaitable[None]]
) -> list[int] | None:
    """`usage_records_commit`'s one statement, run from the event loop on its own connection
    (`gateway_site.db_async`): the new records' ids, in order. None, with nothing written, when it
    takes the general path (`usage_records_commit` on a database thread): kept content, several
    period rows, a period row not known in process, or one deleted meanwhile. New alerts go to
    `on_alert`."""
    if any(write.fields.get("content") is not None for write in writes):
        return None
    rows = _rows_settlements(writes)
    if rows is None:
        records, settlements = _records_settlements(writes)
        insert = _records_insert(records)
    else:
        records, (insert, settlements) = None, rows
    statement = records_statement(insert, settlements, known_only=True)
    if statement is None:
        return None
    try:
        _, found = await db_async.statement(statement.sql, statement.params)
    except DataError as exc:
        if period_row_gone(exc):
            return None
        raise
    ids, alert_ids = statement.written(found)
    if records is not None:
        _records_written(records, (ids, alert_ids))
    if alert_ids:
        await on_alert(alert_ids)
    return ids


def _rows_settlements(writes: list[RecordWrite]) -> tuple[tuple[str, list], list[Settlement]] | None:
    """`_records_insert` and `_records_settlements` for the event loop's statement, from the fields
    themselves: each column's value is the one given, else the field's default, prepared as
    `_records_insert` prepares a record's. Without a model instance per record (Django's
    `Model.__init__` was two fifths of building a lone record's statement: 43 -> 24 us in a warm
    micro-benchmark). None when a field is named otherwise than by its column's attribute (the
    model path then reads it)."""
    known = _insert_attnames()
    rows, settlements = [], []
    for write in writes:
        fields = write.fields
        if not known.issuperset(name for name in fields if name != "content"):
            return None
        row = _insert_row(lambda field: fields[field.attname] if field.attname in fields else field.get_default())
        rows.append(row)
        settlements.append(Settlement(
            budgets=write.budgets, reservation=write.reservation,
            cost=row["cost_usd"], now=row["created_at"],
        ))
    return _rows_insert(rows), settlements


def _records_settlements(writes: list[RecordWrite]) -> tuple[list[UsageRecord], list[Settlement]]:
    records = [
        UsageRecord(**{name: value for name, value in write.fields.items() if name != "content"})
        for write in writes
    ]
    settlements = [
        Settlement(budgets=write.budgets, reservation=write.reservation, cost=record.cost_usd, now=record.created_at)
        for write, record in zip(writes, records)
    ]
    return records, settlements


def _records_written(records: list[UsageRecord], written: tuple[list[int], list[int]]) -> list[int]:
    """Give `records` the ids the statement returned; returns the ids of the alerts it raised."""
    ids, alert_ids = written
    for record, pk in zip(records, ids):
        record.pk = pk
        record._state.adding = False
    return alert_ids


@transaction.atomic
def _records_commit(
    records: list[UsageRecord], contents: list, settlements: list[Settlement], on_alert: Callable[[int], None] | None
) -> list[UsageRecord]:
    records = UsageRecord.objects.bulk_create(records)
    kept = [
        UsageContent(usage_record=record, tenant_id=record.tenant_id, created_at=record.created_at, **content)
        for record, content in zip(records, contents)
        if content is not None
    ]
    if kept:
        UsageContent.objects.bulk_create(kept)
    _alerts_hand_over(budgets_settle(settlements), on_alert)
    return records


def _alerts_hand_over(alert_ids: list[int], on_alert: Callable[[int], None] | None) -> None:
    """Each new alert to `on_alert` once its spend has committed (at once in autocommit)."""
    for alert_id in alert_ids:
        if on_alert is not None:
            transaction.on_commit(lambda alert_id=alert_id: on_alert(alert_id))


def _records_insert(records: list[UsageRecord]) -> tuple[str, list]:
    """The INSERT of `records` ending in `RETURNING id` (ids in the records' order), and its
    values: one JSON array of the rows, which PostgreSQL turns into rows of the table's own type
    (`json_populate_recordset`), so each column's value is parsed by the server as if written in
    SQL. Django's own INSERT binds every value of every row as a parameter (a VALUES row, or an
    array per column) and spent about 190 us of CPU per record on it, where encoding the rows as
    JSON costs about 30 (docs/performance.md). Values are prepared as the ORM prepares them
    (`pre_save`, `get_prep_value`); `test_record_statement` compares the rows both write."""
    return _rows_insert([_insert_row(lambda field, record=record: field.pre_save(record, True)) for record in records])


def _insert_row(value_of: Callable) -> dict:
    """One row of `_records_insert`: each insert field's value (`value_of(field)`), prepared."""
    return {
        field.column: value if type(value) in as_is else field.get_prep_value(value)
        for field, as_is in _insert_fields_as_is()
        for value in (value_of(field),)
    }


def _rows_insert(rows: list[dict]) -> tuple[str, list]:
    return _records_insert_sql(), [orjson.dumps(rows, default=_record_value, option=orjson.OPT_NON_STR_KEYS).decode()]


# Per kind of field, the types of the values its `get_prep_value` returns unchanged: those skip
# it (about half of the cost of a record's JSON). Other values, datetimes among them (a naive one
# is made aware), go through it.
_UNCHANGED = {
    "CharField": (str,), "BooleanField": (bool,), "DecimalField": (Decimal,), "UUIDField": (uuid.UUID,),
    "IntegerField": (int,), "PositiveIntegerField": (int,), "PositiveSmallIntegerField": (int,),
    "SmallIntegerField": (int,), "BigIntegerField": (int,), "ForeignKey": (int,),
    "JSONField": (list, dict, str, int, float, bool),
}


@functools.cache
def _insert_fields_as_is() -> tuple[tuple, ...]:
    return tuple(
        (field, frozenset({type(None), *_UNCHANGED.get(field.get_internal_type(), ())}))
        for field in _insert_fields()
    )


def _record_value(value: object) -> str:
    """What orjson does not encode itself: a DecimalField's value, as its exact text."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"a usage record value of type {type(value).__name__} has no JSON form")


@functools.cache
def _records_insert_sql() -> str:
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(field.column) for field in _insert_fields())
    return (
        f"INSERT INTO {table} ({columns}) SELECT {columns}"
        f" FROM json_populate_recordset(NULL::{table}, %s) RETURNING {connection.ops.quote_name('id')}"
    )


@functools.cache
def _insert_attnames() -> frozenset[str]:
    """The fields `_rows_settlements` can take (none is filled in by `pre_save`, as an `auto_now`
    one would be: then none, and the model path does it)."""
    fields = _insert_fields()
    if any(getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False) for field in fields):
        return frozenset()
    return frozenset(field.attname for field in fields)


@functools.cache
def _insert_fields() -> tuple:
    return tuple(
        field for field in UsageRecord._meta.concrete_fields
        if not field.primary_key and not getattr(field, "generated", False)
    )


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
