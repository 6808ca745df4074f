"""Celery tasks of the routing app."""

from __future__ import annotations

from celery import shared_task

from routing.posteriors import posteriors_refresh


@shared_task(ignore_result=True)
def posteriors_refresh_task() -> int:
    """Run by beat every minute (CELERY_BEAT_SCHEDULE), after the feedback rollups; no retry: until
    the next run succeeds, best_rated keeps the last posteriors (and says how old they are)."""
    return posteriors_refresh()
