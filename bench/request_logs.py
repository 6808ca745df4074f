"""The request log explorer at scale: server time per page with 1,000,000 UsageRecords on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_bench_logs .venv/bin/python bench/request_logs.py

The database is migrated, then filled once (a second run reuses it) by one `INSERT ... SELECT
FROM generate_series` per table, inside PostgreSQL: 10 tenants, the largest with 60% of the
records, over 30 days in time order (as the gateway writes them), ~2% errors and 1% cancelled,
8 models on 3 providers, 5 keys a tenant, skewed end users, tags on half, conversations, feedback
on 1% and guardrail events on 0.5% of the records. Then each page is requested through Django's
test client in process (URL resolution, middleware, session, queries and template: everything
the server does but the socket), a few times to warm up and `--runs` times measured, and the
median and p95 printed as a Markdown table (docs/dashboards.md "Request logs" keeps the figures).
This is a benchmark, not a test: nothing fails on a slow machine.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

TENANTS = 10
KEYS_PER_TENANT = 5
MODELS = [  # (model asked, model served, provider)
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "openai"), ("gpt-4o", "gpt-4o-2024-08-06", "openai"),
    ("claude-haiku-4-5", "claude-haiku-4-5", "anthropic"), ("claude-sonnet-4-5", "claude-sonnet-4-5", "anthropic"),
    ("smart", "gpt-4o-2024-08-06", "openai"), ("cheap", "gemini-2.0-flash", "gemini"),
    ("text-embedding-3-small", "text-embedding-3-small", "openai"), ("gemini-2.5-pro", "gemini-2.5-pro", "gemini"),
]
ERROR_CLASSES = ["rate_limited", "upstream_server", "timeout", "budget_exceeded", "guardrail_blocked"]
TAGS = [f"tag-{i}" for i in range(20)]
ROUTES = ["default", "cheap", "smart", "eu"]

RECORDS_SQL = """
INSERT INTO accounting_usagerecord (
    request_id, response_id, created_at, endpoint, requested_model, provider_name, served_model,
    prompt_tokens, completion_tokens, usage_estimated, prompt_tokens_estimated, completion_tokens_estimated,
    cost_usd, reserved_usd, latency_ms, ttft_ms, stream, status, http_status, error_class, attempts, end_user,
    api_key_id, tenant_id, cached_tokens, tags, task, cache, conversation_id, experiment, route, route_group,
    saved_cost_usd, variant, units, unit_kind, routing_strategy)
SELECT
    gen_random_uuid(), 'chatcmpl-' || g, %(start)s::timestamptz + g * %(step)s::interval,
    'chat.completions', m.asked, m.provider, m.served,
    300 + (g * 7) %% 2000, 20 + (g * 13) %% 600, false, false, false,
    round((random() ^ 3 * 0.05)::numeric, 8), CASE WHEN g %% 2 = 0 THEN 0.05 END,
    200 + floor(random() ^ 4 * 20000)::int, 60 + floor(random() ^ 4 * 3000)::int, g %% 3 = 0,
    s.status, s.http_status, s.error_class,
    jsonb_build_array(jsonb_build_object('provider', m.provider, 'model', m.served, 'deployment', 'd',
        'status', CASE WHEN s.status = 'success' THEN 'success' ELSE 'error' END, 'latency_ms', 250,
        'error_class', s.error_class, 'upstream_status', NULL, 'reason', '')),
    'user-' || floor(random() ^ 3 * 20000)::int,
    (%(keys)s::bigint[])[t.n * %(keys_per)s + 1 + floor(random() ^ 2 * %(keys_per)s)::int], (%(tenants)s::bigint[])[t.n + 1],
    0,
    CASE WHEN g %% 2 = 0 THEN '[]'::jsonb
         WHEN g %% 5 = 1 THEN jsonb_build_array((%(tags)s::text[])[1 + g %% 20], (%(tags)s::text[])[1 + g %% 7])
         ELSE jsonb_build_array((%(tags)s::text[])[1 + floor(random() ^ 2 * 20)::int]) END,
    '', CASE WHEN g %% 10 = 0 THEN 'hit' WHEN g %% 10 < 5 THEN 'miss' ELSE '' END,
    CASE WHEN g %% 10 < 3 THEN 'conv-' || (g / 50) ELSE '' END,
    CASE WHEN g %% 10 = 9 THEN 'exp-1' ELSE '' END, (%(routes)s::text[])[1 + g %% 4], '', 0,
    CASE WHEN g %% 10 = 9 THEN (CASE WHEN g %% 20 = 9 THEN 'a' ELSE 'b' END) ELSE '' END, 0, '', 'fallback'
FROM generate_series(1, %(count)s) AS g
CROSS JOIN LATERAL (SELECT CASE WHEN g %% 10 < 6 THEN 0 ELSE 1 + g %% 9 END AS n) AS t
CROSS JOIN LATERAL (SELECT (%(models)s::text[])[1 + floor(random() ^ 2 * 8 + g * 0)::int] AS i) AS pick
CROSS JOIN LATERAL (SELECT split_part(pick.i, '|', 1) AS asked, split_part(pick.i, '|', 2) AS served,
                           split_part(pick.i, '|', 3) AS provider) AS m
CROSS JOIN LATERAL (SELECT CASE WHEN r < 0.97 THEN 'success' WHEN r < 0.99 THEN 'error' ELSE 'cancelled' END AS status,
                           CASE WHEN r < 0.97 THEN 200 WHEN r < 0.99 THEN 502 ELSE 499 END AS http_status,
                           CASE WHEN r < 0.97 THEN '' WHEN r < 0.99 THEN (%(errors)s::text[])[1 + g %% 5]
                                ELSE 'cancelled' END AS error_class
                    FROM (SELECT random() + g * 0 AS r) AS x) AS s
"""
FEEDBACK_SQL = """
INSERT INTO feedback_feedback (response_id, source, rating, score, rating_value, comment, correction, tags,
                               metadata, created_at, updated_at, tenant_id, usage_record_id)
SELECT response_id, 'api', CASE WHEN id %% 3 = 0 THEN -1 ELSE 1 END, NULL,
       CASE WHEN id %% 3 = 0 THEN 0 ELSE 1 END, '', CASE WHEN id %% 9 = 0 THEN 'A better answer.' ELSE '' END,
       '[]', '{}', created_at, created_at, tenant_id, id
FROM accounting_usagerecord WHERE id %% 100 = 0
"""
GUARDRAIL_SQL = """
INSERT INTO guardrails_guardrailevent (request_id, response_id, kind, direction, action, location, snippet,
                                       created_at, tenant_id)
SELECT request_id, response_id, 'email', 'input', 'redact', 'messages[0].content', 'xxx@xxx.xx', created_at, tenant_id
FROM accounting_usagerecord WHERE id %% 200 = 7
"""


def load(count: int) -> None:
    from datetime import datetime, timedelta, timezone

    from django.db import connection, transaction

    from accounting.models import Tenant, UsageRecord
    from accounting.services import api_key_create, tenant_create

    if UsageRecord.objects.count() >= count:
        print(f"reusing {UsageRecord.objects.count():,} records")
        return
    if Tenant.objects.filter(slug__startswith="bench-").exists():
        sys.exit("The database holds a part of an earlier load: drop it and run again.")
    with transaction.atomic():
        tenants = [tenant_create(slug=f"bench-{i}", name=f"Bench {i}") for i in range(TENANTS)]
        keys = [api_key_create(tenant=t, name=f"key-{k}")[0].pk for t in tenants for k in range(KEYS_PER_TENANT)]
    end = datetime.now(timezone.utc)
    span = timedelta(days=30)
    params = {
        "start": end - span, "step": span / count, "count": count, "tenants": [t.pk for t in tenants],
        "keys": keys, "keys_per": KEYS_PER_TENANT, "tags": TAGS, "routes": ROUTES, "errors": ERROR_CLASSES,
        "models": ["|".join(m) for m in MODELS],
    }
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(RECORDS_SQL, params)
        print(f"{count:,} records in {time.perf_counter() - started:.0f} s")
        cursor.execute(FEEDBACK_SQL, {})
        cursor.execute(GUARDRAIL_SQL, {})
    with connection.cursor() as cursor:
        # What autovacuum does to an insert-only table in time (PostgreSQL 13+): statistics, and the
        # visibility map that lets an index be read without the table.
        cursor.execute("VACUUM (ANALYZE) accounting_usagerecord, feedback_feedback, guardrails_guardrailevent")
    print(f"loaded and vacuumed in {time.perf_counter() - started:.0f} s")


def cases() -> list[tuple[str, str, str]]:
    """(what, who, URL): the member of the largest tenant, or the operator."""
    from accounting.models import Tenant, UsageRecord
    from requestlogs.filters import Cursor

    big = Tenant.objects.get(slug="bench-0")
    mine = UsageRecord.objects.filter(tenant=big)
    key = big.api_keys.order_by("pk").last()  # the least used of its keys
    deep = mine.order_by("-created_at", "-id").values("created_at", "id")
    page_100, near_end = deep[5000], deep[mine.count() - 60]
    old = mine.order_by("created_at").values_list("created_at", flat=True)[mine.count() // 2]
    detail = mine.filter(status="success").exclude(conversation_id="").filter(feedback__isnull=False).first()
    base = "/dashboard/bench-0/requests/"
    day = f"since={old:%Y-%m-%dT%H:%M}&until={old.replace(hour=23, minute=59):%Y-%m-%dT%H:%M}"
    return [
        ("tenant: newest page", "member", base),
        ("tenant: page 101 (keyset)", "member", f"{base}?after={Cursor(page_100['created_at'], page_100['id'])}"),
        ("tenant: the oldest page (keyset)", "member", f"{base}?after={Cursor(near_end['created_at'], near_end['id'])}"),
        ("tenant: back a page (before=)", "member", f"{base}?before={Cursor(page_100['created_at'], page_100['id'])}"),
        ("tenant: one day, 15 days ago", "member", f"{base}?{day}"),
        ("tenant: status=ok", "member", f"{base}?status=ok"),
        ("tenant: status=error (2%)", "member", f"{base}?status=error"),
        ("tenant: status=timeout (0.4%)", "member", f"{base}?status=timeout"),
        ("tenant: model (common)", "member", f"{base}?model=gpt-4o-mini"),
        ("tenant: model (rarest)", "member", f"{base}?model=gemini-2.5-pro"),
        ("tenant: provider", "member", f"{base}?provider=gemini"),
        ("tenant: key (least used)", "member", f"{base}?key={key.pk}"),
        ("tenant: route", "member", f"{base}?route=eu"),
        ("tenant: tag", "member", f"{base}?tag=tag-7"),
        ("tenant: end user (rare)", "member", f"{base}?user=user-19000"),
        ("tenant: variant matching none of its records", "member", f"{base}?variant=a"),
        ("tenant: min cost $0.04", "member", f"{base}?min_cost=0.04"),
        ("tenant: min latency 15 s", "member", f"{base}?min_latency=15000"),
        ("tenant: request id", "member", f"{base}?request_id={detail.request_id}"),
        ("tenant: error + model + tag", "member", f"{base}?status=error&model=gpt-4o&tag=tag-3"),
        ("tenant: route + min latency, page 21", "member",
         f"{base}?route=eu&min_latency=1000&after={Cursor(page_100['created_at'], page_100['id'])}"),
        ("tenant: request detail", "member", f"{base}{detail.request_id}/"),
        ("operator: newest page", "operator", "/dashboard/requests/"),
        ("operator: page 101 (keyset)", "operator",
         f"/dashboard/requests/?after={Cursor(page_100['created_at'], page_100['id'])}"),
        ("operator: one tenant", "operator", "/dashboard/requests/?tenant=bench-7"),
        ("operator: status=error", "operator", "/dashboard/requests/?status=error"),
    ]


def measure(runs: int) -> list[tuple[str, int, float, float, float, float]]:
    from django.contrib.auth.models import Group, User
    from django.db import connection
    from django.test import Client

    from accounting.models import Tenant, TenantMembership

    member, made = User.objects.get_or_create(username="bench-member")
    if made:
        TenantMembership.objects.create(user=member, tenant=Tenant.objects.get(slug="bench-0"))
    operator, made = User.objects.get_or_create(username="bench-operator", defaults={"is_staff": True})
    if made:
        operator.groups.add(Group.objects.get(name="Gateway viewers"))
    clients = {"member": Client(), "operator": Client()}
    clients["member"].force_login(member)
    clients["operator"].force_login(operator)
    results = []
    for what, who, url in cases():
        client = clients[who]
        for _ in range(3):
            response = client.get(url)
            assert response.status_code == 200, (url, response.status_code)
        times, in_database, cpu = [], [], []
        for _ in range(runs):
            spent = [0.0]
            with connection.execute_wrapper(functools.partial(_timed, spent)):
                started, cpu_started = time.perf_counter(), time.process_time()
                response = client.get(url)
                times.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - cpu_started) * 1000)
            in_database.append(spent[0] * 1000)
        rows = response.content.decode().count("<tr data-request-id=")
        result = (what, rows, _p(times, 50), _p(times, 95), _p(in_database, 50), _p(cpu, 50))
        results.append(result)
        print(f"{what:45} rows {rows:3}  p50 {result[2]:7.1f} ms  p95 {result[3]:7.1f} ms  "
              f"database p50 {result[4]:6.1f} ms  server CPU p50 {result[5]:6.1f} ms", flush=True)
    return results


def _timed(spent: list[float], execute, sql, params, many, context):
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        spent[0] += time.perf_counter() - started


def _p(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    return ordered[round(percent / 100 * (len(ordered) - 1))]


def export_rate() -> tuple[int, float]:
    """Rows per second of the streamed CSV of one tenant's errors (the async iterator, consumed whole)."""
    import asyncio

    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import User
    from django.test import AsyncClient

    async def run() -> tuple[int, float]:
        client = AsyncClient()
        await client.aforce_login(await sync_to_async(User.objects.get)(username="bench-member"))
        started = time.perf_counter()
        response = await client.get("/dashboard/bench-0/requests/export.csv?status=error")
        lines = sum([chunk.count(b"\n") async for chunk in response.streaming_content]) - 1
        return lines, time.perf_counter() - started

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database for the benchmark (it is filled with records).")

    import django
    from django.conf import settings
    from django.core.management import call_command
    django.setup()
    logging.disable(logging.INFO)  # one access line per page measured
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # the test clients' host
    call_command("migrate", verbosity=0)
    load(args.records)
    results = measure(args.runs)
    print()
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)\n")
    print(f"| page ({args.records:,} records) | rows | p50 ms | p95 ms | database p50 ms | server CPU p50 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for what, count, p50, p95, database, cpu in results:
        print(f"| {what} | {count} | {p50:.1f} | {p95:.1f} | {database:.1f} | {cpu:.1f} |")
    rows, seconds = export_rate()
    print(f"\nCSV export of the largest tenant's errors: {rows:,} rows in {seconds:.2f} s "
          f"({rows / seconds:,.0f} rows/s)")


if __name__ == "__main__":
    main()
