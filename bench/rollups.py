"""Rollups benchmark (not a test): on PostgreSQL, load records fast, then write new ones at a rate
while rollups run every minute as beat runs them; print each run's records read and seconds, the
lag, the read time of a month's dashboard and /v1/usage, and check the rollups against the raw
records. docs/dashboards.md has the figures.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_bench .venv/bin/python bench/rollups.py \\
        --records 10000000 --rate 1000 --minutes 10

The database is migrated and its usage tables emptied first: give it a database of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.utils import timezone  # noqa: E402

TENANTS = 10
# Rows made by generate_series: tenant, key, model, task, tags, end user, route vary with n.
_INSERT = """
INSERT INTO accounting_usagerecord (request_id, response_id, created_at, tenant_id, api_key_id, endpoint,
    requested_model, provider_name, served_model, prompt_tokens, completion_tokens, usage_estimated,
    prompt_tokens_estimated, completion_tokens_estimated, cost_usd, latency_ms, ttft_ms, stream, status,
    http_status, error_class, attempts, end_user, cached_tokens, task, tags, route, route_group, experiment,
    variant, conversation_id, cache, saved_cost_usd, units, unit_kind, routing_strategy)
SELECT gen_random_uuid(), '', {created_at}, (%(tenants)s::bigint[])[1 + n %% {tenants}], NULL, 'chat.completions',
    'model-' || (n %% 7), 'fake', 'model-' || (n %% 7), 50 + n %% 900, 10 + n %% 300, false, false, false,
    (n %% 1000) / 100000.0, 20 + (n * 7919) %% 3000, CASE WHEN n %% 3 = 0 THEN NULL ELSE 5 + n %% 400 END,
    n %% 2 = 0, CASE WHEN n %% 50 = 0 THEN 'error' ELSE 'success' END, 200,
    CASE WHEN n %% 50 = 0 THEN 'timeout' ELSE '' END, '[]', 'user-' || (n %% 100), 0,
    CASE WHEN n %% 4 = 0 THEN 'summarize' ELSE '' END,
    CASE WHEN n %% 5 = 0 THEN '["batch"]'::jsonb ELSE '[]'::jsonb END, 'rule-' || (n %% 3), '', '', '', '',
    CASE WHEN n %% 10 = 0 THEN 'hit' ELSE 'miss' END, 0, 0, '', 'fallback'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
"""


def load(count: int, tenants: list[int], days: int) -> float:
    """`count` records spread over the last `days` days, by generate_series, in 1M-row statements."""
    started = time.monotonic()
    created_at = f"now() - (n::float / {count} * interval '{days} days')"
    sql = _INSERT.format(created_at=created_at, tenants=TENANTS)
    with connection.cursor() as cursor:
        for first in range(0, count, 1_000_000):
            cursor.execute(sql, {"tenants": tenants, "first": first, "last": min(count, first + 1_000_000) - 1})
    return time.monotonic() - started


def writer(stop: threading.Event, rate: int, tenants: list[int], written: list[int]) -> None:
    """`rate` records a second, written about every 100 ms, stamped now (and one in a hundred late,
    an hour back)."""
    sql = _INSERT.format(created_at="now() - CASE WHEN n %% 100 = 0 THEN interval '1 hour' ELSE interval '0' END",
                         tenants=TENANTS)
    n, started = 10**9, time.monotonic()
    try:
        with connections["default"].cursor() as cursor:
            while not stop.is_set():
                # What is due by now, in one statement (a slow insert is caught up by the next).
                batch = min(int(rate * (time.monotonic() - started)) - written[0], 10 * rate)
                if batch > 0:
                    cursor.execute(sql, {"tenants": tenants, "first": n, "last": n + batch - 1})
                    n += batch
                    written[0] += batch
                time.sleep(0.1)
    finally:
        connections["default"].close()


def main() -> None:
    from accounting.models import Tenant
    from accounting.rollups import rollup_recent

    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between runs (beat: 60)")
    parser.add_argument("--keep", action="store_true", help="keep the records of an earlier run: no load")
    args = parser.parse_args()
    assert connection.vendor == "postgresql", "the benchmark runs on PostgreSQL"
    call_command("migrate", verbosity=0)
    tenants = [Tenant.objects.get_or_create(slug=f"bench-{i}")[0].pk for i in range(TENANTS)]
    if not args.keep:
        initial_load(args.records, tenants)
    while rollup_recent().records_read:
        pass
    steady(args, tenants)


def initial_load(records: int, tenants: list[int]) -> None:
    from accounting.rollups import rollup_recent

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE accounting_usagerecord, accounting_usagerollup, accounting_rollupcursor,"
                       " accounting_usagerecordchange CASCADE")
    print(f"loading {records:,} records over 30 days ...", flush=True)
    print(f"  loaded in {load(records, tenants, 30):.1f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE accounting_usagerecord")
        # A partitioned table's own size is 0: its partitions hold the rows and their indexes.
        cursor.execute("SELECT COALESCE(sum(pg_total_relation_size(relid)), 0) FROM "
                       "pg_partition_tree('accounting_usagerecord')")
        size = cursor.fetchone()[0]
    print(f"  table with indexes: {size / 2**20:.0f} MiB, {size / records * 1e6 / 2**30:.2f} GiB per million")
    caught = rollup_recent()
    print(f"backlog rolled up: {caught.records_read:,} records, {len(caught.buckets)} buckets, "
          f"{caught.rows_written:,} rows written, {caught.seconds:.1f} s "
          f"({caught.records_read / caught.seconds:,.0f} records/s)", flush=True)


def steady(args, tenants: list[int]) -> None:
    from accounting.dashboards import usage_breakdown, usage_timeline, usage_totals, window_for
    from accounting.models import Tenant, UsageRecord, UsageRollup
    from accounting.rollups import rollup_recent, usage_summarize

    stop, written = threading.Event(), [0]
    thread = threading.Thread(target=writer, args=(stop, args.rate, tenants, written), daemon=True)
    thread.start()
    end = time.monotonic() + args.minutes * 60
    print(f"writing {args.rate}/s for {args.minutes} min, a run every {args.interval:.0f} s", flush=True)
    print("run  records-read  seconds  records/s  written-so-far  unrolled-at-end  age-of-oldest-unrolled-s")
    run = 0
    while time.monotonic() < end:
        next_run = time.monotonic() + args.interval
        time.sleep(max(0.0, next_run - time.monotonic()))
        report = rollup_recent()
        with connection.cursor() as cursor:
            cursor.execute("SELECT last_record_id FROM accounting_rollupcursor WHERE name = 'usage'")
            last = cursor.fetchone()[0]
            cursor.execute("SELECT EXTRACT(EPOCH FROM now() - MIN(created_at)), COUNT(*) FROM accounting_usagerecord"
                           " WHERE id > %s AND created_at > now() - interval '50 minutes'", [last])
            lag, behind = cursor.fetchone()
        run += 1
        print(f"{run:3d}  {report.records_read:12,}  {report.seconds:7.2f}  "
              f"{report.records_read / max(report.seconds, 1e-9):9,.0f}  {written[0]:14,}  {behind:15,}  "
              f"{float(lag or 0):.1f}", flush=True)
    stop.set()
    thread.join()
    rollup_recent()
    print(f"written while running: {written[0]:,}")

    tenant = Tenant.objects.get(pk=tenants[0])
    window = window_for(range_key="30d")
    now = timezone.now()
    for name, read in (
        ("dashboard totals+timeline+models 30d", lambda: (usage_totals(tenant=tenant, window=window),
                                                          usage_timeline(tenant=tenant, window=window),
                                                          usage_breakdown(tenant=tenant, window=window,
                                                                          dimension="model"))),
        ("/v1/usage group_by=model, 30 days", lambda: usage_summarize(
            tenant_id=tenant.pk, granularity="day", start=now - timedelta(days=30), end=now, group_by="model")),
        ("/v1/usage group_by=day, 30 days", lambda: usage_summarize(
            tenant_id=tenant.pk, granularity="day", start=now - timedelta(days=30), end=now, group_by="day")),
    ):
        read()
        times = []
        for _ in range(5):
            started = time.monotonic()
            read()
            times.append(time.monotonic() - started)
        print(f"{name}: median {sorted(times)[2] * 1000:.0f} ms")

    totals = UsageRollup.objects.filter(granularity="day", dimension="total")
    checks = {
        "requests": (sum(totals.values_list("requests", flat=True)), UsageRecord.objects.count()),
        "prompt_tokens": (sum(totals.values_list("prompt_tokens", flat=True)),
                          sum(UsageRecord.objects.values_list("prompt_tokens", flat=True).iterator())),
    }
    for name, (rolled, raw) in checks.items():
        print(f"check {name}: rollups {rolled:,} raw {raw:,} {'OK' if rolled == raw else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
