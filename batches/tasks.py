"""Celery tasks of the batches: run one batch; resume those whose runner stopped (beat, and at
every worker's start). They take batch ids and call `batches.runner`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from celery import shared_task
from celery.signals import worker_ready
from django.db import DatabaseError, connection
from django.db.models import Q
from django.utils import timezone

from batches.models import Batch

logger = logging.getLogger(__name__)

# One event loop per worker process for every batch it runs: the pipeline's per-loop resources (the
# upstream HTTP client, the database and Redis connections) are made once and kept warm.
_loop: asyncio.AbstractEventLoop | None = None


def _loop_run(work):
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(work)


def runner_name() -> str:
    """Who holds a batch's lease: this worker process, this run."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@shared_task(ignore_result=True, acks_late=True)
def batch_run_task(batch_id: str) -> None:
    """Run a batch to its end (or resume it, or finalize it); nothing if another runner holds it."""
    from batches.runner import batch_run

    _loop_run(batch_run(batch_id, owner=runner_name()))


@shared_task(ignore_result=True)
def batches_resume_task() -> int:
    """Hand every unfinished batch that no runner holds to a worker: a worker that died, a batch
    whose window ran out while no one ran it. Beat, every minute, and each worker's start."""
    now = timezone.now()
    ids = list(Batch.objects.filter(status__in=Batch.ACTIVE).filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now)).values_list("pk", flat=True))
    for batch_id in ids:
        batch_run_task.delay(batch_id)
    return len(ids)


@worker_ready.connect
def resume_on_start(**_) -> None:
    """A worker that starts resumes the batches left unfinished once their runners' leases have
    run out (a worker killed mid-batch and started again)."""
    from batches.runner import LEASE_SECONDS

    try:
        if Batch.objects.filter(status__in=Batch.ACTIVE).exists():
            batches_resume_task.apply_async(countdown=LEASE_SECONDS + 1)
    except DatabaseError:
        logger.warning("batches not resumed at start (database unavailable); beat resumes them", exc_info=True)
    finally:
        connection.close()  # the worker's main process keeps no connection of its own
