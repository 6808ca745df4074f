"""A UsageRecord's write, and the hand-over to Celery of the budget alerts it raised: for the
request's record step (`routing.record`) and the journal's replay (`routing.journal`)."""

from __future__ import annotations

import asyncio
import logging

from accounting.services import RecordWrite, usage_record_create
from accounting.tasks import budget_alert_send_task
from kernel.db_executor import db_call
from kernel.loops import background

logger = logging.getLogger(__name__)


async def record_write(write: RecordWrite) -> None:
    """Write one record (`usage_record_create`, which writes the records that arrive together in
    one statement) and hand the alerts it raised to Celery, in the background."""
    _, alert_ids = await usage_record_create(fields=write.fields, budgets=write.budgets, reservation=write.reservation)
    if alert_ids:
        background(_alerts_enqueue(alert_ids), what="budget alerts hand-over")


async def records_write(writes: list[RecordWrite]) -> list[Exception | None]:
    """Write several records (the journal's replay): one outcome per write, None when written."""
    outcomes = await asyncio.gather(*(record_write(write) for write in writes), return_exceptions=True)
    return [outcome if isinstance(outcome, Exception) else None for outcome in outcomes]


async def _alerts_enqueue(alert_ids: list[int]) -> None:
    """Hand new alerts to Celery from a database thread: publishing to the broker blocks. The
    records and their alerts are committed by now, so a broker that fails costs the alerts'
    notifications (logged), never the records."""
    try:
        await db_call(lambda: [_alert_enqueue(alert_id) for alert_id in alert_ids])
    except Exception:  # noqa: BLE001 - the records stand
        logger.exception("budget alerts %s committed but not handed to Celery", alert_ids)


def _alert_enqueue(alert_id: int) -> None:
    budget_alert_send_task.delay(alert_id)
