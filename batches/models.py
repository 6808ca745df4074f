"""OpenAI's Files and Batches: an uploaded JSONL file, a batch run over it, one row per line.

A line's row is its state (`pending`, `running`, `done`) and, once done, its output or error line.
Its `request_id` is the UsageRecord's of its current attempt (`attempt`): a line is answered at
most once per attempt, and `batches.runner` starts a new attempt only for a line that has no
record (docs/batches.md, "Exactly once").
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from accounting.models import Tenant, TenantApiKey

# The namespace of the lines' request ids: uuid5(LINE_NAMESPACE, "<batch id>:<index>:<attempt>").
LINE_NAMESPACE = uuid.UUID("6c1f2a9e-5b0d-4c53-9a4e-0b8f3d2e7a61")


def file_id_new() -> str:
    return f"file-{uuid.uuid4().hex[:24]}"


def batch_id_new() -> str:
    return f"batch_{uuid.uuid4().hex[:24]}"


class BatchFile(models.Model):
    """A file of the Files API: what a tenant uploaded (`batch`) or a batch wrote (`batch_output`).
    Its bytes are in the `batches` storage (settings.STORAGES) under `name`."""

    class Purpose(models.TextChoices):
        BATCH = "batch"
        BATCH_OUTPUT = "batch_output"

    id = models.CharField(primary_key=True, max_length=40, default=file_id_new, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="batch_files")
    purpose = models.CharField(max_length=20, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    name = models.CharField(max_length=300, help_text="Where the bytes are in the batches storage.")
    bytes = models.PositiveBigIntegerField(default=0)
    lines = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="batch_file_tenant_time")]

    def __str__(self) -> str:
        return f"{self.id} {self.filename}"


class Batch(models.Model):
    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    ACTIVE = (Status.VALIDATING, Status.IN_PROGRESS, Status.FINALIZING, Status.CANCELLING)

    id = models.CharField(primary_key=True, max_length=40, default=batch_id_new, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="batches")
    api_key = models.ForeignKey(TenantApiKey, on_delete=models.PROTECT, related_name="batches",
                                help_text="The key the batch's lines run as (its limits, budgets, models).")
    input_file = models.ForeignKey(BatchFile, on_delete=models.SET_NULL, null=True, related_name="+")
    input_file_key = models.CharField(max_length=40, help_text="The input file's id, kept if it is deleted.")
    endpoint = models.CharField(max_length=40)
    completion_window = models.CharField(max_length=10, default="24h")
    metadata = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    errors = models.JSONField(null=True, blank=True, help_text="Validation errors of a failed batch.")
    estimate_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0,
                                       help_text="The most its lines could cost, as estimated at creation.")
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    output_file = models.ForeignKey(BatchFile, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    error_file = models.ForeignKey(BatchFile, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # Which worker runs it, until when: a runner renews its lease while it runs; another takes
    # over (and resumes the lines) only once the lease has run out (batches.runner).
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "batches"
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="batch_tenant_time"),
            models.Index(fields=["status"], name="batch_status"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.status}"


class BatchLine(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    index = models.PositiveIntegerField(help_text="Its line number in the input file, from 1.")
    custom_id = models.CharField(max_length=512, blank=True)
    body = models.JSONField(null=True, blank=True, help_text="The request body (None: the line was refused).")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempt = models.PositiveSmallIntegerField(default=0)
    request_id = models.UUIDField(help_text="The UsageRecord's request id of its current attempt.")
    ok = models.BooleanField(null=True, blank=True, help_text="Answered with success; None until done.")
    result = models.JSONField(null=True, blank=True, help_text="Its line of the output or error file.")
    kept = models.JSONField(null=True, blank=True, help_text=(
        "While running: its answer and its UsageRecord's write, kept just before the record is written "
        "(routing.record), for the runner that resumes it if its worker died."))

    class Meta:
        ordering = ["batch", "index"]
        constraints = [models.UniqueConstraint(fields=["batch", "index"], name="uniq_batch_line")]
        indexes = [models.Index(fields=["batch", "state", "index"], name="batch_line_state")]

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.index}"


def line_request_id(batch_id: str, index: int, attempt: int) -> uuid.UUID:
    return uuid.uuid5(LINE_NAMESPACE, f"{batch_id}:{index}:{attempt}")
