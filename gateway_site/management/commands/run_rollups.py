"""`manage.py run_rollups`: run the due rollups now, synchronously, and say what they processed.

Without arguments: what beat runs every minute (the usage rollups, then the feedback rollups),
until caught up. With `--recompute FROM TO`: recompute every hour and day bucket overlapping
[FROM, TO) from raw records (ISO dates or times, UTC when no offset is given).
"""

from __future__ import annotations

import time
from datetime import datetime
from datetime import timezone as dt_timezone

from django.core.management.base import BaseCommand, CommandError

from accounting.rollups import RollupReport, rollup_recent, rollup_recompute
from feedback.rollups import feedback_rollup_bucket, feedback_rollup_recent


def _when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"'{text}' is not an ISO date or time (2026-03-01 or 2026-03-01T10:00+00:00).") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt_timezone.utc)


class Command(BaseCommand):
    help = "Run the due usage and feedback rollups now (or recompute a range) and print what they processed."

    def add_arguments(self, parser):
        parser.add_argument("--recompute", nargs=2, metavar=("FROM", "TO"),
                            help="Recompute the hour and day buckets of [FROM, TO) from raw records.")

    def handle(self, *args, recompute=None, **options):
        if recompute:
            start, end = (_when(text) for text in recompute)
            if end <= start:
                raise CommandError("TO must be after FROM.")
            usage = rollup_recompute(start=start, end=end)
            feedback, started = RollupReport(), time.monotonic()
            for granularity, bucket in sorted(usage.buckets):
                feedback.rows_written += feedback_rollup_bucket(granularity=granularity, bucket_start=bucket)
            feedback.buckets, feedback.seconds = set(usage.buckets), time.monotonic() - started
            self._line("usage recompute", usage)
            self._line("feedback recompute", feedback)
            return
        self._line("usage", rollup_recent())
        self._line("feedback", feedback_rollup_recent())

    def _line(self, what: str, report: RollupReport) -> None:
        self.stdout.write(
            f"{what}: records read {report.records_read}, changes applied {report.changes_applied}, "
            f"buckets touched {len(report.buckets)}, rows written {report.rows_written}, "
            f"seconds {report.seconds:.3f}"
        )
