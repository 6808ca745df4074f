"""Liveness (`/health`: the process is up) and readiness (`/ready`: it can serve).

`/ready` checks, each within `GATEWAY_READY_TIMEOUT` seconds and all at once: the database
answers, every migration of this code is applied, Redis answers (when `REDIS_URL` is set) and the
Celery broker is reachable. Any failure makes it a 503 naming the dependency, so a load balancer
takes the process out of rotation until the dependency is back. Operators (the metrics token or
an allowed address, as for `/metrics`) also get a summary of provider health: breakers and
recent success per provider.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse

from kernel.redis_client import RedisConnections

CACHE_SECONDS = 1.0
_migrations_applied = False  # once true for this code, it stays true
_cache: dict[tuple, tuple[float, dict]] = {}
_redis: dict[str, RedisConnections] = {}


async def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


async def ready(request: HttpRequest) -> JsonResponse:
    from kernel.metrics import operator_allowed

    report = await _report()
    ok = all(result["status"] in ("ok", "not_configured") for result in report.values())
    body: dict = {"status": "ok" if ok else "unavailable", "checks": report}
    if operator_allowed(request):
        body["providers"] = await _providers_summary()
    return JsonResponse(body, status=200 if ok else 503)


async def _report() -> dict:
    """The checks' results, shared for `CACHE_SECONDS`: a flood of probes costs the database and
    Redis one check per second per process, not one per probe."""
    key = (settings.DATABASES["default"]["NAME"], settings.REDIS_URL, settings.CELERY_BROKER_URL)
    cached = _cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    names, checks = zip(*_checks())
    report = dict(zip(names, await asyncio.gather(*(_timed(check) for check in checks))))
    _cache.clear()
    _cache[key] = (time.monotonic() + CACHE_SECONDS, report)
    return report


def _checks():
    yield "database", _in_thread(_database_check)
    yield "migrations", _in_thread(_migrations_check)
    yield "redis", _redis_check(settings.REDIS_URL)
    yield "celery_broker", _broker_check(settings.CELERY_BROKER_URL)


async def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.GATEWAY_READY_TIMEOUT):
            status = await check
    except TimeoutError:
        status = {"status": "error", "error": f"no answer within {settings.GATEWAY_READY_TIMEOUT:g}s"}
    except Exception as exc:  # the dependency's own error: name it, without its details
        status = {"status": "error", "error": type(exc).__name__}
    return {**status, "ms": round((time.perf_counter() - started) * 1000, 1)}


async def _in_thread(check) -> dict:
    # Not thread_sensitive: a database that hangs must not block the thread every other sync
    # call of this process runs in. The check closes its own connection.
    return await sync_to_async(check, thread_sensitive=False)()


def _database_check() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"status": "ok", "vendor": connection.vendor}
    finally:
        connection.close()


def _migrations_check() -> dict:
    global _migrations_applied
    if _migrations_applied:
        return {"status": "ok"}
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        connection.close()
    if plan:
        pending = sorted({f"{migration.app_label}.{migration.name}" for migration, _ in plan})
        return {"status": "error", "error": "unapplied migrations", "pending": pending[:20]}
    _migrations_applied = True
    return {"status": "ok"}


async def _redis_check(url: str) -> dict:
    if not url:
        return {"status": "not_configured"}
    if url not in _redis:
        _redis[url] = RedisConnections(url, timeout=settings.GATEWAY_READY_TIMEOUT)
    await _redis[url].async_client().ping()
    return {"status": "ok"}


async def _broker_check(url: str) -> dict:
    if url.startswith(("redis://", "rediss://")):
        return {**await _redis_check(url), "transport": "redis"}
    if url.startswith("filesystem://"):
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        if not folder.is_dir():
            return {"status": "error", "error": "broker folder missing", "transport": "filesystem"}
        return {"status": "ok", "transport": "filesystem"}
    return {**await _in_thread(_kombu_check), "transport": url.split(":", 1)[0]}


def _kombu_check() -> dict:
    from gateway_site.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.GATEWAY_READY_TIMEOUT)
    return {"status": "ok"}


async def _providers_summary() -> list[dict]:
    try:
        async with asyncio.timeout(settings.GATEWAY_READY_TIMEOUT):
            return await sync_to_async(_providers_rows)()
    except Exception as exc:  # a timeout, or the database or Redis down: the checks say which
        return [{"error": type(exc).__name__}]


def _providers_rows() -> list[dict]:
    """Per provider: deployments, breakers by state, the worst success rate and the last error."""
    from routing.explain import provider_health_rows

    providers: dict[str, dict] = defaultdict(lambda: {"deployments": 0, "breakers": defaultdict(int)})
    for row in provider_health_rows():
        entry = providers[row["deployment"].target.provider_name]
        entry["deployments"] += 1
        entry["breakers"][row["breaker"].state if row["breaker"] else "closed"] += 1
        health = row["health"]
        if health is not None and health.success_rate is not None:
            entry["success_rate"] = round(min(entry.get("success_rate", 1.0), health.success_rate), 3)
        if health is not None and health.last_error_at and health.last_error_at > entry.get("last_error_at", 0):
            entry["last_error_at"], entry["last_error"] = health.last_error_at, health.last_error
    return [
        {"provider": name, **entry, "breakers": dict(entry["breakers"]),
         "status": "down" if entry["breakers"].get("open") == entry["deployments"]
         else "degraded" if entry["breakers"].get("open") or entry["breakers"].get("half_open") else "ok"}
        for name, entry in sorted(providers.items())
    ]
