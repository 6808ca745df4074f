"""UsageRecord's monthly partitions on PostgreSQL (accounting/partitions.py, the conversion in
accounting/migrations/0014_partitioned_records.py): records land in their month's partition,
partitions are made ahead and catch what the default partition held, retention drops old months
with what points at their records while rollups stay, and a record is still written once."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.db import IntegrityError, connection
from django.db.migrations.executor import MigrationExecutor

from accounting.models import UsageContent, UsageRecord, UsageRollup
from accounting.partitions import DEFAULT, TABLE, partitioned, partitions, partitions_drop, partitions_ensure
from accounting.rollups import rollup_recent
from accounting.services import RecordWrite, tenant_create, usage_record_create
from accounting.tasks import record_partitions_task
from accounting.writes import record_write
from feedback.models import Feedback
from routing.journal import Journal
from routing.journal import replay as replay_async
from tests.accounting.test_record_statement import every_field

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="partitions are PostgreSQL's"),
]

JAN, FEB, MAR = (datetime(2020, month, 15, 12, tzinfo=timezone.utc) for month in (1, 2, 3))


@pytest.fixture(autouse=True)
def old_partitions_dropped():
    """This module makes partitions for 2020; a transactional test's flush empties tables, it does
    not drop them."""
    yield
    with connection.cursor() as cursor:
        for name, month in partitions():
            if month is not None and month.year < 2025:
                cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}")
                cursor.execute(f"DROP TABLE {name}")


def where(record_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tableoid::regclass::text FROM {TABLE} WHERE id = %s", [record_id])
        return cursor.fetchone()[0]


def record(tenant, created_at: datetime, cost: str = "0.25") -> UsageRecord:
    return UsageRecord.objects.create(
        tenant=tenant, created_at=created_at, endpoint="chat.completions", status="success",
        prompt_tokens=10, completion_tokens=5, cost_usd=Decimal(cost), latency_ms=20,
    )


def test_the_table_is_partitioned_by_month_with_partitions_ahead():
    assert partitioned()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_partkeydef(to_regclass(%s))", [TABLE])
        assert cursor.fetchone()[0] == "RANGE (created_at)"
        cursor.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(%s)"
            " AND contype IN ('p', 'u') ORDER BY contype", [TABLE],
        )
        assert [row[0] for row in cursor.fetchall()] == ["PRIMARY KEY (id, created_at)", "UNIQUE (request_id, created_at)"]
    assert record_partitions_task(retention_months=0) == []  # beat's daily run: made already
    now = datetime.now(timezone.utc)
    names = {name for name, _ in partitions()}
    assert DEFAULT in names
    for ahead in (0, 1, 2):  # this month and the next two (the migration, then beat)
        month = (now.replace(day=1) + timedelta(days=32 * ahead)).replace(day=1)
        assert f"{TABLE}_{month:%Y_%m}" in names


def test_records_land_in_their_months_partition_and_ensure_moves_strays_from_the_default():
    tenant = tenant_create(slug="parts")
    now = record(tenant, datetime.now(timezone.utc))
    assert where(now.pk) == f"{TABLE}_{datetime.now(timezone.utc):%Y_%m}"
    stray = record(tenant, JAN)  # no partition for 2020 yet
    assert where(stray.pk) == DEFAULT

    assert partitions_ensure(now=JAN) == [f"{TABLE}_2020_01", f"{TABLE}_2020_02", f"{TABLE}_2020_03"]
    assert partitions_ensure(now=JAN) == []  # made once
    assert where(stray.pk) == f"{TABLE}_2020_01"  # moved out of the default
    assert where(record(tenant, FEB).pk) == f"{TABLE}_2020_02"
    # The ORM reads across partitions by id, as before.
    assert UsageRecord.objects.get(pk=stray.pk).cost_usd == Decimal("0.25")
    assert UsageRecord.objects.filter(tenant=tenant).count() == 3


def test_retention_drops_old_months_with_what_points_at_them_and_rollups_stay():
    tenant = tenant_create(slug="retained")
    partitions_ensure(now=JAN)
    old = [record(tenant, JAN, "0.10"), record(tenant, FEB, "0.20")]
    kept = record(tenant, MAR, "0.40")
    for item in (*old, kept):
        Feedback.objects.create(tenant=tenant, usage_record=item, response_id=f"r{item.pk}", rating=1)
        UsageContent.objects.create(usage_record=item, tenant=tenant, created_at=item.created_at, messages=[])
    rollup_recent()
    rolled = {row.bucket_start.month: row.cost_usd for row in UsageRollup.objects.filter(
        tenant=tenant, granularity="day", dimension="total")}
    assert rolled == {1: Decimal("0.10"), 2: Decimal("0.20"), 3: Decimal("0.40")}

    call_command("record_partitions", "--retention-months", "0")  # 0 keeps every month
    assert UsageRecord.objects.filter(tenant=tenant).count() == 3
    assert partitions_drop(retention_months=1, now=MAR) == [f"{TABLE}_2020_01", f"{TABLE}_2020_02"]

    names = {name for name, _ in partitions()}
    assert f"{TABLE}_2020_01" not in names and f"{TABLE}_2020_03" in names
    assert list(UsageRecord.objects.filter(tenant=tenant)) == [kept]
    assert list(Feedback.objects.filter(tenant=tenant).values_list("usage_record_id", flat=True)) == [kept.pk]
    assert list(UsageContent.objects.values_list("usage_record_id", flat=True)) == [kept.pk]
    rollup_recent()
    assert {row.bucket_start.month: row.cost_usd for row in UsageRollup.objects.filter(
        tenant=tenant, granularity="day", dimension="total")} == rolled  # the rollups stay
    with pytest.raises(ValueError):
        partitions_drop(retention_months=-1)


def test_feedback_and_content_join_and_cascade_without_database_constraints():
    tenant = tenant_create(slug="joins")
    item = record(tenant, datetime.now(timezone.utc))
    Feedback.objects.create(tenant=tenant, usage_record=item, response_id="r1", score=5)
    UsageContent.objects.create(usage_record=item, tenant=tenant, messages=[{"role": "user", "content": "hi"}])
    assert Feedback.objects.filter(usage_record__cost_usd=Decimal("0.25")).count() == 1
    assert UsageRecord.objects.get(feedback__response_id="r1", content__isnull=False) == item
    item.delete()  # Django's collector cascades, as on_delete always did
    assert not Feedback.objects.filter(tenant=tenant).exists()
    assert not UsageContent.objects.filter(tenant=tenant).exists()


def test_a_record_is_written_once_by_its_retry_and_by_the_journal_replay(settings, tmp_path):
    """The record step pins `created_at` before its first write: a second write of the same record
    (a retry after a lost connection, the journal's replay) collides on (request_id, created_at)."""
    settings.GATEWAY_RECORD_JOURNAL_DIR = str(tmp_path / "journal")
    tenant = tenant_create(slug="once")
    fields = every_field(tenant, uuid.uuid4(), "0.25", created_at=datetime.now(timezone.utc) - timedelta(seconds=5))
    write = RecordWrite(fields=dict(fields))
    async_to_sync(record_write)(write)
    with pytest.raises(IntegrityError):
        async_to_sync(usage_record_create)(fields=dict(fields))

    journal = Journal()
    assert journal.keep(write)  # kept, as when the first write's answer was lost with its connection
    journal.release()
    assert async_to_sync(replay_async)() == 0
    assert UsageRecord.objects.filter(request_id=fields["request_id"]).count() == 1


def test_the_migration_converts_a_filled_table_and_back():
    """accounting 0014 on a table that holds records (the path of an existing deployment): the
    records, their ids, corrections and the sequence carry over; its reverse gives one table back."""
    tenant = tenant_create(slug="converted")
    executor = MigrationExecutor(connection)
    executor.migrate([("accounting", "0013_usage_request_once")])
    assert not partitioned()
    start = datetime.now(timezone.utc) - timedelta(days=40)
    records = [record(tenant, start + timedelta(days=day)) for day in range(0, 40, 3)]
    Feedback.objects.create(tenant=tenant, usage_record=records[0], response_id="r0", rating=1)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert partitioned()
    assert sorted(UsageRecord.objects.filter(tenant=tenant).values_list("pk", flat=True)) == [r.pk for r in records]
    assert where(records[0].pk) == f"{TABLE}_{start:%Y_%m}" and where(records[-1].pk) == f"{TABLE}_{records[-1].created_at:%Y_%m}"
    assert Feedback.objects.get(response_id="r0").usage_record == records[0]
    assert record(tenant, datetime.now(timezone.utc)).pk == records[-1].pk + 1  # the sequence carried on
