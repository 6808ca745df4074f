"""Writes of the Files and Batches API: files stored and deleted, batches created, cancelled,
their lines claimed and finished, the output and error files written. Sync, each its own
transaction, called from the async views and the runner through `kernel.db_executor.db_call`."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import orjson
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounting.models import UsageRecord
from batches.formats import Line, error_line
from batches.models import Batch, BatchFile, BatchLine, line_request_id
from kernel.errors import InvalidRequest, NotFound, PayloadTooLarge

WINDOW = timedelta(hours=24)


def batch_storage():
    return storages["batches"]


def file_create(*, tenant_id: int, upload, purpose: str) -> BatchFile:
    """Keep an uploaded batch input file: one request per line, at most GATEWAY_BATCH_MAX_LINES."""
    if purpose != BatchFile.Purpose.BATCH:
        raise InvalidRequest(f"'purpose' must be 'batch' (got {purpose!r}).", param="purpose")
    if upload.size > settings.GATEWAY_BATCH_MAX_FILE_BYTES:
        raise PayloadTooLarge(
            f"The file is {upload.size} bytes; the largest batch file is "
            f"{settings.GATEWAY_BATCH_MAX_FILE_BYTES} bytes (GATEWAY_BATCH_MAX_FILE_BYTES).", param="file")
    lines = sum(1 for raw in upload.open("rb") if raw.strip())
    if lines == 0:
        raise InvalidRequest("The file is empty: a batch file has one JSON request per line.", param="file")
    if lines > settings.GATEWAY_BATCH_MAX_LINES:
        raise InvalidRequest(
            f"The file has {lines} lines; a batch file has at most {settings.GATEWAY_BATCH_MAX_LINES}.",
            param="file")
    file = BatchFile(tenant_id=tenant_id, purpose=purpose, filename=(upload.name or "batch.jsonl")[:255],
                     bytes=upload.size, lines=lines)
    upload.seek(0)
    file.name = batch_storage().save(f"{tenant_id}/{file.id}.jsonl", upload)
    file.save()
    return file


def file_delete(*, tenant_id: int, file_id: str) -> bool:
    file = BatchFile.objects.filter(tenant_id=tenant_id, pk=file_id).first()
    if file is None:
        return False
    file.delete()
    batch_storage().delete(file.name)
    return True


def file_read(file: BatchFile) -> bytes:
    with batch_storage().open(file.name, "rb") as handle:
        return handle.read()


def batch_create(*, tenant_id: int, key_id: int, file: BatchFile, endpoint: str, metadata: dict | None,
                 estimate: Decimal) -> Batch:
    """A batch in `validating`, for a worker to run (`batches.tasks.batch_run_task`)."""
    now = timezone.now()
    return Batch.objects.create(
        tenant_id=tenant_id, api_key_id=key_id, input_file=file, input_file_key=file.id, endpoint=endpoint,
        metadata=metadata, estimate_usd=estimate, created_at=now, expires_at=now + WINDOW, total=file.lines,
    )


def batch_cancel(*, tenant_id: int, batch_id: str) -> Batch:
    """Stop a batch's new lines at once (the runner claims none once it is `cancelling`); its lines
    in flight finish and are recorded, then it becomes `cancelled`."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().filter(tenant_id=tenant_id, pk=batch_id).first()
        if batch is None:
            raise NotFound(f"No batch with id '{batch_id}'.", param="batch_id")
        if batch.status not in (Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS):
            raise InvalidRequest(f"Cannot cancel a batch that is {batch.status}.", code="batch_not_cancellable")
        batch.status, batch.cancelling_at = Batch.Status.CANCELLING, timezone.now()
        batch.save(update_fields=["status", "cancelling_at"])
    return batch


# --- the runner's steps -----------------------------------------------------------------------------


def lease_take(*, batch_id: str, owner: str, seconds: float) -> bool:
    """Hold (or renew) the batch's lease for `seconds`: one runner at a time; another only once the
    holder stopped renewing it (a worker killed or cut off)."""
    now = timezone.now()
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=owner)
    taken = Batch.objects.filter(free, pk=batch_id, status__in=Batch.ACTIVE).update(
        lease_owner=owner, lease_until=now + timedelta(seconds=seconds))
    return taken == 1


def lease_release(*, batch_id: str, owner: str) -> None:
    Batch.objects.filter(pk=batch_id, lease_owner=owner).update(lease_owner="", lease_until=None)


def lines_create(*, batch_id: str, lines: list[Line]) -> None:
    """`validating` -> `in_progress`: the batch's lines, the refused ones done and failed already.
    Run again after a worker died mid-way, it adds only the lines that are missing."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch_id)
        if batch.status != Batch.Status.VALIDATING:
            return
        BatchLine.objects.bulk_create(
            [_line_row(batch_id, line) for line in lines], ignore_conflicts=True, batch_size=2000
        )
        refused = BatchLine.objects.filter(batch_id=batch_id, ok=False).count()
        batch.status, batch.in_progress_at = Batch.Status.IN_PROGRESS, timezone.now()
        batch.total, batch.failed = len(lines), refused
        batch.save(update_fields=["status", "in_progress_at", "total", "failed"])


def _line_row(batch_id: str, line: Line) -> BatchLine:
    row = BatchLine(batch_id=batch_id, index=line.index, custom_id=line.custom_id, body=line.body,
                    request_id=line_request_id(batch_id, line.index, 0))
    if line.error:
        row.state, row.ok = BatchLine.State.DONE, False
        row.result = error_line(line_id=line_item_id(row), custom_id=line.custom_id, code="invalid_request",
                                message=line.error, line=line.index)
    return row


def line_item_id(line: BatchLine) -> str:
    return f"batch_req_{line.request_id.hex}"


def batch_fail(*, batch_id: str, errors: list[dict]) -> None:
    Batch.objects.filter(pk=batch_id, status=Batch.Status.VALIDATING).update(
        status=Batch.Status.FAILED, failed_at=timezone.now(), errors=errors)


def lines_running(*, batch_id: str) -> list[BatchLine]:
    """The lines a runner that stopped left `running` (`batches.runner` resumes them)."""
    return list(BatchLine.objects.filter(batch_id=batch_id, state=BatchLine.State.RUNNING))


def record_exists(*, request_id) -> bool:
    return UsageRecord.objects.filter(request_id=request_id).exists()


def line_resend(*, line_id: int) -> None:
    """A line cut before its record: pending again under a new attempt (its own request id)."""
    line_retry(line_id=line_id)


def line_keep(*, line_id: int, kept: dict) -> None:
    BatchLine.objects.filter(pk=line_id).update(kept=kept)


def line_claim(*, batch_id: str, owner: str) -> BatchLine | None:
    """The next pending line, now `running` (committed before it is sent), or None when the batch
    has none left, or no longer runs (cancelled, expired, its lease lost)."""
    with transaction.atomic():
        batch = Batch.objects.filter(
            pk=batch_id, status=Batch.Status.IN_PROGRESS, lease_owner=owner, expires_at__gt=timezone.now()
        ).first()
        if batch is None:
            return None
        line = (BatchLine.objects.select_for_update(skip_locked=True)
                .filter(batch_id=batch_id, state=BatchLine.State.PENDING).order_by("index").first())
        if line is not None:
            line.state = BatchLine.State.RUNNING
            line.save(update_fields=["state"])
        return line


def line_release(*, line_id: int) -> None:
    """A claimed line that was not sent (its batch stopped while it waited): pending again."""
    BatchLine.objects.filter(pk=line_id, state=BatchLine.State.RUNNING).update(state=BatchLine.State.PENDING)


def line_retry(*, line_id: int) -> None:
    """A line the tenant's live traffic left no room for (its rate limit refused it): pending
    again, under a new attempt (the refused attempt has its own record)."""
    line = BatchLine.objects.get(pk=line_id)
    line.state, line.attempt, line.kept = BatchLine.State.PENDING, line.attempt + 1, None
    line.request_id = line_request_id(line.batch_id, line.index, line.attempt)
    line.save(update_fields=["state", "attempt", "request_id", "kept"])


def line_finish(*, line_id: int, ok: bool, result: dict) -> None:
    """A line's answer (or error) and the batch's counts, together."""
    with transaction.atomic():
        updated = BatchLine.objects.filter(pk=line_id).exclude(state=BatchLine.State.DONE).update(
            state=BatchLine.State.DONE, ok=ok, result=result, kept=None)
        if updated:
            line = BatchLine.objects.only("batch_id").get(pk=line_id)
            counter = "completed" if ok else "failed"
            Batch.objects.filter(pk=line.batch_id).update(**{counter: F(counter) + 1})


def batch_finalize(*, batch_id: str) -> None:
    """The end of a batch's run: `finalizing`, its output and error files written, then `completed`,
    `cancelled` (it was cancelling) or `expired` (its window ran out); lines never sent go to the
    error file as `batch_cancelled` or `batch_expired`."""
    batch = Batch.objects.get(pk=batch_id)
    now = timezone.now()
    if batch.status == Batch.Status.CANCELLING:
        final, code = Batch.Status.CANCELLED, "batch_cancelled"
    elif batch.expires_at <= now and BatchLine.objects.filter(batch_id=batch_id, state=BatchLine.State.PENDING).exists():
        final, code = Batch.Status.EXPIRED, "batch_expired"
    else:
        final, code = Batch.Status.COMPLETED, ""
    if batch.status == Batch.Status.IN_PROGRESS:
        Batch.objects.filter(pk=batch_id).update(status=Batch.Status.FINALIZING, finalizing_at=now)
    for line in BatchLine.objects.filter(batch_id=batch_id).exclude(state=BatchLine.State.DONE):
        message = "The batch was cancelled before this request was sent." if code == "batch_cancelled" else (
            "The batch's completion window ended before this request was sent.")
        line_finish(line_id=line.pk, ok=False,
                    result=error_line(line_id=line_item_id(line), custom_id=line.custom_id, code=code, message=message))
    output = _output_write(batch, ok=True)
    errors = _output_write(batch, ok=False)
    stamp = {Batch.Status.COMPLETED: "completed_at", Batch.Status.CANCELLED: "cancelled_at",
             Batch.Status.EXPIRED: "expired_at"}[final]
    Batch.objects.filter(pk=batch_id).update(
        status=final, output_file=output, error_file=errors, lease_owner="", lease_until=None,
        **{stamp: timezone.now()})


def _output_write(batch: Batch, *, ok: bool) -> BatchFile | None:
    """The output (ok) or error file: one JSON line per line, in input order; None when empty."""
    buffer = io.BytesIO()
    count = 0
    for result in BatchLine.objects.filter(batch_id=batch.pk, ok=ok).order_by("index").values_list("result", flat=True).iterator():
        buffer.write(orjson.dumps(result) + b"\n")
        count += 1
    if not count:
        return None
    kind = "output" if ok else "error"
    file = BatchFile(tenant_id=batch.tenant_id, purpose=BatchFile.Purpose.BATCH_OUTPUT,
                     filename=f"{batch.pk}_{kind}.jsonl", bytes=buffer.tell(), lines=count)
    file.name = batch_storage().save(f"{batch.tenant_id}/{file.id}.jsonl", ContentFile(buffer.getvalue()))
    file.save()
    return file
