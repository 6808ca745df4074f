"""UsageRecord's monthly partitions on PostgreSQL (docs/deployment.md, "Partitioned records").

On PostgreSQL the records' table is partitioned by RANGE(created_at), one partition a month named
`accounting_usagerecord_YYYY_MM`, and a default partition (`accounting_usagerecord_default`)
catches a record whose month has none yet. Its keys hold the partition column: PRIMARY KEY
(id, created_at) and UNIQUE (request_id, created_at); Django keeps `id` as the model's primary key
(ids come from the table's sequence, so they stay unique) and the foreign keys that point at a
record (Feedback, MetricValue, UsageContent) have no database constraint: Django's collector
cascades their deletes, as `on_delete` always does.

`partitions_ensure` makes this month's partition and the next ones ahead (beat, daily), moving any
record the default partition caught for their months; `partitions_drop` detaches and drops the
partitions older than a retention in months (`manage.py record_partitions --retention-months N`),
with the rows that point at their records. Rollups are kept: they count what they read, not what
stays. SQLite (the embedded mode) keeps one table, and both do nothing there.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone as dt_timezone

from django.db import connection, transaction
from django.db.models.deletion import CASCADE
from django.utils import timezone

from accounting.models import UsageRecord

logger = logging.getLogger(__name__)

TABLE = UsageRecord._meta.db_table
DEFAULT = f"{TABLE}_default"
AHEAD = 2  # months made ahead of this one


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(dt_timezone.utc)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_add(month: datetime, count: int) -> datetime:
    index = month.year * 12 + month.month - 1 + count
    return month.replace(year=index // 12, month=index % 12 + 1)


def partition_name(month: datetime) -> str:
    return f"{TABLE}_{month:%Y_%m}"


def partitioned() -> bool:
    """Whether the records' table is partitioned (PostgreSQL, after the conversion)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return bool(row) and row[0] == "p"


def partitions() -> list[tuple[str, datetime | None]]:
    """The records' partitions, each with the month it holds (None for the default), oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname", [TABLE],
        )
        names = [name for (name,) in cursor.fetchall()]
    found = []
    for name in names:
        if name == DEFAULT:
            found.append((name, None))
        else:
            year, month = name[len(TABLE) + 1:].split("_")
            found.append((name, datetime(int(year), int(month), 1, tzinfo=dt_timezone.utc)))
    return found


def partition_create(cursor, month: datetime) -> bool:
    """Make the partition of `month` unless it exists; False when it did. The records of that month
    the default partition caught move into it, while the default is locked against writes (reads
    go on); the new partition gets the table's indexes and keys as it is attached."""
    name = partition_name(month)
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    if cursor.fetchone()[0]:
        return False
    bounds = [month, month_add(month, 1)]
    quoted, table, default = (connection.ops.quote_name(n) for n in (name, TABLE, DEFAULT))
    cursor.execute(f"LOCK TABLE {default} IN EXCLUSIVE MODE")
    cursor.execute(f"CREATE TABLE {quoted} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {default} WHERE created_at >= %s AND created_at < %s RETURNING *)"
        f" INSERT INTO {quoted} SELECT * FROM moved", bounds,
    )
    if cursor.rowcount:
        logger.warning("%d record(s) moved from %s into %s", cursor.rowcount, DEFAULT, name)
    cursor.execute(f"ALTER TABLE {table} ATTACH PARTITION {quoted} FOR VALUES FROM (%s) TO (%s)", bounds)
    return True


def partitions_ensure(*, now: datetime | None = None, ahead: int = AHEAD) -> list[str]:
    """Make this month's partition and the `ahead` next ones, and refresh the table's statistics;
    returns the names made."""
    if not partitioned():
        return []
    first = month_start(now or timezone.now())
    made = []
    for count in range(ahead + 1):
        month = month_add(first, count)
        with transaction.atomic(), connection.cursor() as cursor:
            if partition_create(cursor, month):
                made.append(partition_name(month))
    with connection.cursor() as cursor:
        # Autovacuum analyzes each partition, never the partitioned table: its statistics (a sample
        # across partitions) are refreshed here, daily.
        cursor.execute(f"ANALYZE {connection.ops.quote_name(TABLE)}")
    return made


def partitions_drop(*, retention_months: int, now: datetime | None = None) -> list[str]:
    """Detach and drop the partitions of the months before the last `retention_months` (this one
    included), and the default partition's records of those months; what points at their records
    (feedback, metric values, kept content: every relation that cascades) goes with them. Rollups
    stay. 0 keeps every month. Returns the partitions dropped."""
    if retention_months < 0:
        raise ValueError("The retention is a number of months, 0 (keep forever) or more.")
    if not retention_months or not partitioned():
        return []
    cutoff = month_add(month_start(now or timezone.now()), -(retention_months - 1))
    table = connection.ops.quote_name(TABLE)
    dropped = []
    for name, month in partitions():
        if month is None or month >= cutoff:
            continue
        with transaction.atomic():
            _dependents_delete(UsageRecord.objects.filter(created_at__gte=month, created_at__lt=month_add(month, 1)))
            with connection.cursor() as cursor:
                cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {connection.ops.quote_name(name)}")
                cursor.execute(f"DROP TABLE {connection.ops.quote_name(name)}")
        dropped.append(name)
        logger.info("records partition %s dropped (retention %d months)", name, retention_months)
    with transaction.atomic():
        strays = UsageRecord.objects.filter(created_at__lt=cutoff)
        _dependents_delete(strays)
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(DEFAULT)} WHERE created_at < %s", [cutoff])
    return dropped


def _dependents_delete(records) -> None:
    """Delete the rows of every model whose foreign key to UsageRecord cascades, for `records`
    (one DELETE each, selecting the records by their month: the partition alone is read)."""
    for relation in UsageRecord._meta.related_objects:
        if relation.on_delete is CASCADE:
            relation.related_model._default_manager.filter(
                **{f"{relation.field.name}__in": records.values("pk")}
            ).delete()
