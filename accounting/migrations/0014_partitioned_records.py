"""UsageRecord's table becomes partitioned by month on PostgreSQL (accounting.partitions).

SQLite keeps one table: the steps below run only on PostgreSQL. The conversion keeps the table
readable throughout and writable until its last step (docs/deployment.md, "Partitioned records"):

1. a partitioned copy (`accounting_usagerecord_p`) is made with the same columns, checks, foreign
   keys and indexes, PRIMARY KEY (id, created_at) and UNIQUE (request_id, created_at), a partition
   per month from the oldest record's to two months ahead, and a default partition;
2. the records are copied into it in batches of `BATCH` ids, each its own transaction, while the
   gateway goes on reading and writing the old table;
3. one short transaction locks the old table against writes (reads go on), copies the records
   written since (and the last batch's ids again, for a record whose id was handed out before
   the batch ran but committed after), copies again the ones corrected since (every correction
   writes a UsageRecordChange in its transaction), moves the id sequence on, drops the old table
   and gives the copy its name.

The migration is not atomic: a failure between batches leaves the copy behind, and running the
migration again starts it afresh.
"""

import re

from django.db import migrations, transaction

TABLE = "accounting_usagerecord"
NEW = f"{TABLE}_p"
BATCH = 50_000


def _month_add(month, count):
    index = month.year * 12 + month.month - 1 + count
    return month.replace(year=index // 12, month=index % 12 + 1)


def partition(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        _rebuild(schema_editor.connection, partitioned=True)


def unpartition(apps, schema_editor):
    """Back to one table (PRIMARY KEY (id)), the same way."""
    if schema_editor.connection.vendor == "postgresql":
        _rebuild(schema_editor.connection, partitioned=False)


def _rebuild(connection, *, partitioned: bool):
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        if cursor.fetchone()[0] == ("p" if partitioned else "r"):
            return
        renames = _copy_create(cursor, connection.ops.quote_name, partitioned=partitioned)
        cursor.execute("SELECT coalesce(max(id), 0) FROM accounting_usagerecordchange")
        changes_seen = cursor.fetchone()[0]
        cursor.execute(f"SELECT coalesce(max(id), 0) FROM {TABLE}")
        last = cursor.fetchone()[0]
        copied = 0
        while copied < last:  # autocommit: each batch its own transaction
            upper = min(copied + BATCH, last)
            cursor.execute(f"INSERT INTO {NEW} SELECT * FROM {TABLE} WHERE id > %s AND id <= %s", [copied, upper])
            copied = upper
    with connection.cursor() as cursor, transaction.atomic(using=connection.alias):
        _swap(cursor, connection.ops.quote_name, copied=copied, changes_seen=changes_seen, renames=renames)
    with connection.cursor() as cursor:
        # Autovacuum analyzes partitions, never a partitioned table itself: its statistics once here.
        cursor.execute(f"ANALYZE {TABLE}")


def _copy_create(cursor, q, *, partitioned: bool) -> list[tuple[str, str, str]]:
    """The empty copy with the table's columns, checks, keys and indexes (and partitions); returns
    the renames its constraints and indexes wait for (kind, the copy's name, the table's)."""
    cursor.execute(f"DROP TABLE IF EXISTS {NEW} CASCADE")
    cursor.execute(
        f"CREATE TABLE {NEW} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        + (" PARTITION BY RANGE (created_at)" if partitioned else "")
    )
    # PostgreSQL before 17 has no identity column on a partitioned table: a sequence of its own.
    cursor.execute(f"CREATE SEQUENCE {NEW}_id_seq OWNED BY {NEW}.id")
    cursor.execute(f"ALTER TABLE {NEW} ALTER COLUMN id SET DEFAULT nextval(%s)", [NEW + "_id_seq"])
    key = "id, created_at" if partitioned else "id"
    cursor.execute(f"ALTER TABLE {NEW} ADD CONSTRAINT {NEW}_pkey PRIMARY KEY ({key})")
    renames = [("constraint", NEW + "_pkey", TABLE + "_pkey")]
    cursor.execute(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = to_regclass(%s) AND contype IN ('u', 'f')", [TABLE],
    )
    for name, kind, definition in cursor.fetchall():
        # A unique constraint's index is named for it, schema-wide: the copy's gets a new name.
        new_name = name + "_p" if kind == "u" else name
        cursor.execute(f"ALTER TABLE {NEW} ADD CONSTRAINT {q(new_name)} {definition}")
        if kind == "u":
            renames.append(("constraint", new_name, name))
    cursor.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s) AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)", [TABLE],
    )
    for name, definition in cursor.fetchall():
        match = re.match(r"CREATE (UNIQUE )?INDEX (\S+) ON (?:ONLY )?(\S+) (.*)$", definition)
        cursor.execute(f"CREATE {match[1] or ''}INDEX {q(name + '_p')} ON {NEW} {match[4]}")
        renames.append(("index", name + "_p", name))
    if partitioned:
        cursor.execute(f"SELECT min(created_at) FROM {TABLE}")
        _partitions_create(cursor, q, cursor.fetchone()[0])
    return renames


def _swap(cursor, q, *, copied: int, changes_seen: int, renames) -> None:
    """The last step, in one transaction, writes locked out: what was written and corrected since
    the copy began, the sequence, the names."""
    cursor.execute(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
    # Ids are handed out before their rows commit: the last batch's ids again, those already
    # copied left as they are.
    cursor.execute(
        f"INSERT INTO {NEW} SELECT * FROM {TABLE} WHERE id > %s ON CONFLICT DO NOTHING", [max(copied - BATCH, 0)]
    )
    corrected = "SELECT record_id FROM accounting_usagerecordchange WHERE id > %s"
    cursor.execute(f"DELETE FROM {NEW} WHERE id IN ({corrected})", [changes_seen])
    cursor.execute(f"INSERT INTO {NEW} SELECT * FROM {TABLE} WHERE id IN ({corrected})", [changes_seen])
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
    (sequence,) = cursor.fetchone()
    cursor.execute(f"SELECT last_value, is_called FROM {sequence}")
    cursor.execute("SELECT setval(%s, %s, %s)", [NEW + "_id_seq", *cursor.fetchone()])
    cursor.execute(f"DROP TABLE {TABLE}")
    cursor.execute(f"ALTER TABLE {NEW} RENAME TO {TABLE}")
    cursor.execute(f"ALTER SEQUENCE {NEW}_id_seq RENAME TO {TABLE}_id_seq")
    for kind, old, new in renames:
        if kind == "constraint":
            cursor.execute(f"ALTER TABLE {TABLE} RENAME CONSTRAINT {q(old)} TO {q(new)}")
        else:
            cursor.execute(f"ALTER INDEX {q(old)} RENAME TO {q(new)}")


def _partitions_create(cursor, q, oldest):
    """A partition per month from the oldest record's to two months ahead, and the default."""
    from datetime import timezone as dt_timezone

    from django.utils import timezone

    now = timezone.now().astimezone(dt_timezone.utc)
    month = (oldest or now).astimezone(dt_timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    until = _month_add(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), 3)
    while month < until:
        cursor.execute(
            f"CREATE TABLE {q(f'{TABLE}_{month:%Y_%m}')} PARTITION OF {q(NEW)} FOR VALUES FROM (%s) TO (%s)",
            [month, _month_add(month, 1)],
        )
        month = _month_add(month, 1)
    cursor.execute(f"CREATE TABLE {q(TABLE + '_default')} PARTITION OF {q(NEW)} DEFAULT")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("accounting", "0013_usage_request_once"),
        ("feedback", "0005_usage_record_without_db_constraint"),
    ]

    operations = [
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
