"""Answered requests' UsageRecords that the database has not taken yet, kept on the worker's disk.

While PostgreSQL is unreachable an answered request's record is retried in the background for
`RECORD_RETRY_SECONDS` (`routing.record`). In memory alone it was lost if the worker died in that
time: killed, restarted by its supervisor, or stopped by a deploy whose drain cuts the retries
after a few seconds. So once a record's first write fails, its worker also appends it to a file
of its own in `GATEWAY_RECORD_JOURNAL_DIR` (one JSON line: the record's fields, its budgets and
reservation, and when it was kept), and holds an exclusive `flock` on that file while it lives.
When every record it kept has been written, the file is emptied; past `ROTATE_BYTES` a new file
takes the next records and the old one is removed once all of its are written.

Every worker looks in the folder at start and every `REPLAY_SECONDS` after (`replay_loop`): a
file whose lock it can take belongs to a worker that is gone, and its records are written as a
retry writes them (`accounting.writes.records_write`). A record that is already there fails on its
unique `request_id` together with its settlement (one transaction), so nothing is counted twice;
while the database is still unreachable the file is kept for the next look. A worker whose
retries give up releases its file (a new one takes later records), so the records it held are
written by the next look of any worker. Files are named after the database they belong to (its
name): a folder shared by servers of several databases (tests, a staging copy) never mixes them.

The lines reach the page cache, not the disk (no fsync): a worker that dies loses nothing, a
machine that loses power during an outage may lose the last ones.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import orjson
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError

from accounting.budgets import BudgetLimit, Reservation
from accounting.services import RecordWrite
from accounting.statements import insert_fields
from accounting.writes import records_write

logger = logging.getLogger(__name__)

REPLAY_SECONDS = 10.0
_PREFIX = "records-"


def _folder() -> Path:
    return Path(settings.GATEWAY_RECORD_JOURNAL_DIR)


def _database_tag() -> str:
    """The database's engine and name: not its host or port, which a failover or a proxy changes."""
    database = settings.DATABASES["default"]
    return hashlib.sha256(f"{database['ENGINE']}|{database['NAME']}".encode()).hexdigest()[:16]


# A journal file past this size takes no more records: the next one does, and it is removed once
# every record it holds is written (under steady load the current file is never all written).
ROTATE_BYTES = 1 << 20


class _File:
    __slots__ = ("fd", "path", "pending", "size")

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"{_PREFIX}{_database_tag()}-{os.getpid()}-{time.time_ns()}.jsonl"
        self.fd = _open_locked(self.path)
        self.pending: set[str] = set()
        self.size = 0


class Journal:
    """This process's journal: a file opened (and locked) on its first record, emptied when every
    record it holds is written, replaced by a new one past `ROTATE_BYTES`."""

    def __init__(self) -> None:
        self._current: _File | None = None
        self._files: dict[str, _File] = {}  # request id -> the file that holds it

    def keep(self, write: RecordWrite) -> bool:
        """Append `write`; False (logged) if it could not be kept: it is then only in memory."""
        folder = _folder()
        request_id = str(write.fields["request_id"])
        try:
            if self._current is None or self._current.size >= ROTATE_BYTES:
                self._rotate(folder)
            line = _line(write)
            os.write(self._current.fd, line)
        except OSError:
            logger.exception("usage record %s could not be kept in %s", request_id, folder)
            return False
        self._current.size += len(line)
        self._current.pending.add(request_id)
        self._files[request_id] = self._current
        return True

    def written(self, request_id) -> None:
        """A kept record is in the database now."""
        file = self._files.pop(str(request_id), None)
        if file is None:
            return
        file.pending.discard(str(request_id))
        if file.pending:
            return
        try:
            if file is self._current:
                os.ftruncate(file.fd, 0)
                file.size = 0
            else:
                _remove(file)
        except OSError:
            logger.exception("usage record journal %s could not be emptied", file.path.name)

    def release(self) -> None:
        """Leave every file (and what it holds) to the next replay; new files take later records."""
        for file in {id(f): f for f in [*self._files.values(), self._current] if f is not None}.values():
            os.close(file.fd)
        self._files.clear()
        self._current = None

    def _rotate(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        previous, self._current = self._current, _File(folder)
        if previous is not None and not previous.pending:
            _remove(previous)


def _remove(file: _File) -> None:
    file.path.unlink(missing_ok=True)  # still locked: no replay takes it meanwhile
    os.close(file.fd)


journal = Journal()


def _open_locked(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _line(write: RecordWrite) -> bytes:
    entry = {
        "kept_at": datetime.now(timezone.utc),
        "fields": write.fields,
        "budgets": write.budgets,  # dataclasses: orjson writes their fields
        "reservation": write.reservation,
    }
    return orjson.dumps(entry, default=_json_default) + b"\n"


def write_dumps(write: RecordWrite) -> bytes:
    """A record's write as a journal line holds it (one JSON object), for a caller that keeps it
    elsewhere until written: a batch line (`batches.runner`)."""
    return _line(write).rstrip(b"\n")


def write_loads(data: bytes) -> RecordWrite:
    """The write `write_dumps` gave, to be written (`accounting.writes.record_write`)."""
    return _write_from(orjson.loads(data))


def _json_default(value: object) -> str:
    """What orjson does not encode itself: a Decimal, as its exact text."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"a usage record value of type {type(value).__name__} has no JSON form")


def _write_from(entry: dict) -> RecordWrite:
    """The `RecordWrite` a journal line holds, each field's value as the model field reads it."""
    from accounting.models import UsageRecord

    fields = {}
    for name, value in entry["fields"].items():
        if name == "content" or value is None:
            fields[name] = value
        else:
            fields[name] = UsageRecord._meta.get_field(name).to_python(value)
    # The request's own time, not the replay's: its spend belongs to the period it was answered in.
    fields.setdefault("created_at", UsageRecord._meta.get_field("created_at").to_python(entry["kept_at"]))
    for field in insert_fields():  # a line kept by a version without a field the record has now
        if field.attname not in fields and field.has_default():
            fields[field.attname] = field.get_default()
    budgets = tuple(
        BudgetLimit(**{
            **budget, "amount_usd": Decimal(budget["amount_usd"]), "thresholds": tuple(budget["thresholds"]),
        })
        for budget in entry["budgets"]
    )
    reservation = entry["reservation"]
    if reservation is not None:
        reservation = Reservation(
            request_id=reservation["request_id"], amount=Decimal(reservation["amount"]),
            period_ids=tuple(reservation["period_ids"]),
        )
    return RecordWrite(fields=fields, budgets=budgets, reservation=reservation)


async def replay() -> int:
    """Write the records of every journal whose worker is gone; returns how many were written. A
    journal stays while the database cannot be reached."""
    folder = _folder()
    if not folder.is_dir():
        return 0
    written = 0
    for path in sorted(folder.glob(f"{_PREFIX}{_database_tag()}-*.jsonl")):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # another worker replayed it meanwhile
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its worker is alive
            outcome = await _replay_file(path)
            if outcome is None:
                return written  # the database is unreachable: the rest waits for the next look
            written += outcome
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return written


async def _replay_file(path: Path) -> int | None:
    writes = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            writes.append(_write_from(orjson.loads(line)))
        except Exception:  # noqa: BLE001 - a line cut short by a crash, or one this code cannot read
            logger.error("usage record journal %s: line %d could not be read; left out", path.name, number)
    if not writes:
        return 0
    written = 0
    for write, outcome in zip(writes, await records_write(writes)):
        if outcome is None:
            written += 1
        elif isinstance(outcome, (OperationalError, InterfaceError)):
            return None
        elif isinstance(outcome, IntegrityError):
            pass  # written before (by its retry, or an earlier replay): nothing counted twice
        else:
            logger.error("usage record %s from journal %s could not be written: %r",
                         write.fields.get("request_id"), path.name, outcome)
    if written:
        logger.warning("usage record journal %s: %d record(s) written after their worker had gone", path.name, written)
    return written


async def replay_loop() -> None:
    """A worker's part: replay orphaned journals at start and every `REPLAY_SECONDS` after."""
    while True:
        try:
            await replay()
        except Exception:  # noqa: BLE001 - the next look tries again
            logger.exception("usage record journals could not be replayed")
        await asyncio.sleep(REPLAY_SECONDS)
