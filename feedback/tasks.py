"""Celery tasks of the feedback app: a run adds what changed in the transaction that marks it
counted, so a retry adds nothing twice; a bucket's recompute converges."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task
from django.db import OperationalError

from feedback.rollups import feedback_rollup_bucket, feedback_rollup_recent


@shared_task(ignore_result=True)
def feedback_rollup_recent_task() -> int:
    """Run by beat every minute (CELERY_BEAT_SCHEDULE); no retry, the next run catches up.
    Returns the number of feedback and values that moved."""
    return feedback_rollup_recent().changes_applied


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def feedback_rollup_bucket_task(granularity: str, bucket_start_iso: str) -> int:
    """Recompute one bucket, e.g. after a backfill."""
    return feedback_rollup_bucket(granularity=granularity, bucket_start=datetime.fromisoformat(bucket_start_iso))
