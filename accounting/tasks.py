"""Celery tasks of the accounting app: they take ids or time buckets, never model instances, and
call the services. A rollup run adds what its cursors had not seen, in the transaction that moves
them, so a retry or a killed run adds nothing twice; a bucket's recompute converges."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task
from django.db import OperationalError

from accounting.alerts import budget_alert_send
from accounting.budgets import reservations_release_stale
from accounting.services import content_retention_enforce
from accounting.partitions import partitions_drop, partitions_ensure
from accounting.rollups import rollup_bucket, rollup_recent


@shared_task(ignore_result=True)
def rollup_recent_task() -> int:
    """Run by beat every minute (CELERY_BEAT_SCHEDULE); no retry, the next run catches up.
    Returns the number of records read."""
    return rollup_recent().records_read


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def rollup_bucket_task(granularity: str, bucket_start_iso: str) -> int:
    """Recompute one bucket, e.g. after a backfill:
    `rollup_bucket_task.delay("day", "2026-01-31T00:00:00+00:00")`."""
    return rollup_bucket(granularity=granularity, bucket_start=datetime.fromisoformat(bucket_start_iso))


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def budget_alert_send_task(alert_id: int) -> None:
    """Deliver one budget alert (enqueued when the spend that raised it commits)."""
    budget_alert_send(alert_id=alert_id)


@shared_task(ignore_result=True)
def reservations_release_stale_task() -> int:
    """Free budget reservations of requests whose process died before settling them."""
    return reservations_release_stale()


@shared_task(ignore_result=True)
def content_retention_task() -> int:
    """Delete kept prompts and answers older than their tenant's retention (beat, hourly)."""
    return content_retention_enforce()


@shared_task(ignore_result=True)
def record_partitions_task(retention_months: int = 0) -> list[str]:
    """Make the records' monthly partitions ahead (PostgreSQL; beat, daily) and drop the ones older
    than `retention_months` (0 keeps them all; `manage.py record_partitions --retention-months`)."""
    made = partitions_ensure()
    partitions_drop(retention_months=retention_months)
    return made
