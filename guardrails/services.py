"""Writes of the guardrails app: the events a request raised, saved with its UsageRecord."""

from __future__ import annotations

import asyncio
import uuid

from kernel.db_executor import db_call
from kernel.loops import background
from guardrails.models import GuardrailEvent


def guardrail_events_create(*, tenant_id: int, request_id: uuid.UUID, response_id: str, events: list[dict]) -> None:
    """One row per event, in one query. `events` hold no matched text (see `checks.masked`)."""
    GuardrailEvent.objects.bulk_create(
        GuardrailEvent(tenant_id=tenant_id, request_id=request_id, response_id=response_id, **event)
        for event in events
    )


def guardrail_events_start(
    *, tenant_id: int, request_id: uuid.UUID, response_id: str, events: list[dict]
) -> asyncio.Task | None:
    """Start writing a request's events (from its record step) in a task of its own, so that a
    client going away, which cancels the request, cannot cancel the write. `events` is the
    writer's from then on: the caller hands it over and keeps no reference to append to."""
    if not events:
        return None
    return background(db_call(
        guardrail_events_create,
        tenant_id=tenant_id, request_id=request_id, response_id=response_id, events=events,
    ), what="guardrail event write")


async def guardrail_events_wait(task: asyncio.Task | None) -> None:
    if task is None:
        return
    try:
        await asyncio.shield(task)
    except Exception:  # logged by `background`
        pass
