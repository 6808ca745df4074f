"""The journal of records not yet written (routing/journal.py): what a worker keeps while the
database is unreachable, and the replay that writes a gone worker's records exactly once."""

from __future__ import annotations

import fcntl
import os
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest
from asgiref.sync import async_to_sync

from accounting.budgets import _budgets_load, budget_reserve
from accounting.models import Budget, BudgetPeriod, BudgetReservation, UsageRecord
from accounting.services import RecordWrite, tenant_create
from routing import journal as journal_module
from routing.journal import Journal, _line, _write_from
from routing.journal import replay as replay_async
from tests.accounting.test_record_statement import every_field

pytestmark = pytest.mark.django_db(transaction=True)
replay = async_to_sync(replay_async)


@pytest.fixture(autouse=True)
def folder(settings, tmp_path):
    settings.GATEWAY_RECORD_JOURNAL_DIR = str(tmp_path / "journal")
    return tmp_path / "journal"


def budgeted():
    tenant = tenant_create(slug=f"t{uuid.uuid4().hex[:8]}")
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("10.00"), period="monthly", hard=True)
    return tenant, _budgets_load(tenant.pk, 0)


def answered(tenant, budgets, cost="0.25") -> RecordWrite:
    """An answered request's write, as the record step makes it: reserved, no `created_at`."""
    request_id = uuid.uuid4()
    reservation = async_to_sync(budget_reserve)(budgets=budgets, request_id=str(request_id), estimate=Decimal("0.50"))
    fields = every_field(tenant, request_id, cost)
    del fields["created_at"]
    return RecordWrite(fields=fields, budgets=budgets, reservation=reservation)


def journals(folder) -> list:
    return sorted(folder.glob("records-*.jsonl"))


def test_a_line_gives_back_the_write_it_kept():
    tenant, budgets = budgeted()
    write = answered(tenant, budgets)
    write.fields["content"] = {"messages": [{"role": "user", "content": "hi"}], "completion": "hello"}
    before = datetime.now(timezone.utc)
    back = _write_from(orjson.loads(_line(write)))
    kept_at = back.fields.pop("created_at")
    assert back == write
    assert before <= kept_at <= datetime.now(timezone.utc)


def test_a_line_kept_before_a_field_was_added_gives_the_field_its_default():
    """A worker upgraded during an outage replays lines kept by the version before: a record field
    added since (here the per-side estimate flags) takes its model default."""
    tenant, budgets = budgeted()
    write = answered(tenant, budgets)
    entry = orjson.loads(_line(write))
    del entry["fields"]["prompt_tokens_estimated"], entry["fields"]["completion_tokens_estimated"]
    back = _write_from(entry)
    assert (back.fields["prompt_tokens_estimated"], back.fields["completion_tokens_estimated"]) == (False, False)
    assert back.fields["usage_estimated"] is True  # what the line says is kept


def test_kept_records_are_emptied_from_the_file_once_written(folder):
    tenant, budgets = budgeted()
    journal = Journal()
    first, second = answered(tenant, budgets), answered(tenant, budgets)
    assert journal.keep(first) and journal.keep(second)
    [path] = journals(folder)
    assert len(path.read_bytes().splitlines()) == 2
    journal.written(first.fields["request_id"])
    assert len(path.read_bytes().splitlines()) == 2  # the second is still waiting
    journal.written(second.fields["request_id"])
    assert path.read_bytes() == b""
    assert journal.keep(answered(tenant, budgets))  # the same file goes on
    assert len(path.read_bytes().splitlines()) == 1
    journal.release()


def test_a_gone_workers_records_are_written_once_with_their_settlement(folder):
    tenant, budgets = budgeted()
    journal = Journal()
    writes = [answered(tenant, budgets, cost) for cost in ("0.25", "0.10")]
    for write in writes:
        assert journal.keep(write)
    [path] = journals(folder)
    kept = path.read_bytes()
    assert replay() == 0  # its worker (this journal) still holds it
    journal.release()  # as a worker that dies lets go of its lock

    replayed_at = datetime.now(timezone.utc)
    assert replay() == 2
    assert journals(folder) == []
    records = UsageRecord.objects.filter(request_id__in=[w.fields["request_id"] for w in writes])
    assert sorted(record.cost_usd for record in records) == [Decimal("0.10"), Decimal("0.25")]
    period = BudgetPeriod.objects.get(budget__tenant=tenant)
    assert period.spent_usd == Decimal("0.35") and period.reserved_usd == Decimal("0")
    assert not BudgetReservation.objects.filter(budget_period=period).exists()
    assert all(record.created_at < replayed_at for record in records)  # when kept, not when replayed

    # The same journal again (a replay cut short before it removed the file): nothing twice.
    path.write_bytes(kept)
    assert replay() == 0
    assert journals(folder) == []
    assert UsageRecord.objects.filter(tenant=tenant).count() == 2
    period.refresh_from_db()
    assert period.spent_usd == Decimal("0.35")


def test_a_line_cut_short_is_left_out_and_the_rest_written(folder):
    tenant, budgets = budgeted()
    journal = Journal()
    write = answered(tenant, budgets)
    assert journal.keep(write)
    journal.release()
    [path] = journals(folder)
    with open(path, "ab") as file:
        file.write(_line(answered(tenant, budgets))[:40])  # a crash in the middle of an append
    assert replay() == 1
    assert UsageRecord.objects.filter(tenant=tenant).count() == 1


def test_another_databases_journal_is_left_alone(folder):
    folder.mkdir(parents=True)
    other = folder / "records-0123456789abcdef-1-1.jsonl"
    other.write_bytes(b"{}\n")
    assert replay() == 0
    assert other.exists()


def test_a_locked_journal_is_not_replayed_and_a_folder_that_cannot_be_made_keeps_nothing(folder, settings, tmp_path):
    tenant, budgets = budgeted()
    journal = Journal()
    assert journal.keep(answered(tenant, budgets))
    [path] = journals(folder)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the journal
    finally:
        os.close(fd)
    journal.release()

    (tmp_path / "a-file").write_text("")
    settings.GATEWAY_RECORD_JOURNAL_DIR = str(tmp_path / "a-file" / "journal")
    assert Journal().keep(answered(tenant, budgets)) is False


def test_a_full_journal_gives_way_to_a_new_one_and_is_removed_once_written(folder, monkeypatch):
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 1)  # every record fills a file
    tenant, budgets = budgeted()
    journal = Journal()
    writes = [answered(tenant, budgets) for _ in range(3)]
    for write in writes:
        assert journal.keep(write)
    assert len(journals(folder)) == 3  # a long outage under load: the files stay while they hold records
    journal.written(writes[1].fields["request_id"])
    assert len(journals(folder)) == 2  # a full one, all written: removed
    journal.written(writes[0].fields["request_id"])
    [current] = journals(folder)
    assert len(current.read_bytes().splitlines()) == 1  # the third's, still waiting
    journal.written(writes[2].fields["request_id"])
    assert [path.read_bytes() for path in journals(folder)] == [b""]
    journal.release()
