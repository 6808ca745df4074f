"""The rollup tasks run by a real Celery worker process, over Redis, against the test database.

The worker is another process, so it sees only committed data: the tests use
`django_db(transaction=True)` and hand the worker the test database's URL. The `worker` fixture
depends on `transactional_db`, so it is torn down (the worker stopped, its connections closed)
before pytest-django flushes the tables and, at the end of the session, drops the database.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from django.db import connection
from django.utils import timezone

from accounting.models import UsageRecord, UsageRollup
from accounting.services import api_key_create, tenant_create
from tests.conftest import ROOT, stop_process

pytestmark = pytest.mark.django_db(transaction=True)

BROKER_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/1"
DEADLINE_SECONDS = 60
HOUR = datetime(2026, 4, 2, 15, tzinfo=dt_timezone.utc)


def worker_database_url() -> str:
    """The URL of pytest-django's test database (`test_<name>`), as the worker must see it."""
    db = connection.settings_dict
    auth = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class Worker:
    queue: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


@pytest.fixture
def worker(transactional_db, tmp_path):
    queue = f"test-rollups-{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": BROKER_URL,
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "gateway_site", "worker", "--pool=solo", "--concurrency=1",
             "-Q", queue, "--hostname", f"{queue}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    yield Worker(queue=queue, process=process, log_path=log_path)
    stop_process(process)
    # The queue is this test's own: leave nothing of it in Redis (kombu keeps a binding per queue).
    with redis.Redis.from_url(BROKER_URL) as client:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


@pytest.fixture
def client():
    """A Celery client of its own, sending to the test's worker queue."""
    app = Celery("rollup-test-client", broker=BROKER_URL)
    yield app
    app.close()


def wait_for(condition, *, worker: Worker, what: str):
    """Poll `condition` until it returns a truthy value; fail at the deadline or if the worker died."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        value = condition()
        if value:
            return value
        if worker.process.poll() is not None:
            pytest.fail(f"the worker exited ({worker.process.returncode}) before {what}:\n{worker.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE_SECONDS}s; worker log:\n{worker.log()}")
        time.sleep(0.05)


def records_create(*, tenant, key, start: datetime) -> list[UsageRecord]:
    return [
        UsageRecord.objects.create(
            tenant=tenant, api_key=key, endpoint="chat.completions", created_at=start + timedelta(minutes=i),
            requested_model=model, status="error" if i == 3 else "success", error_class="timeout" if i == 3 else "",
            prompt_tokens=100 * i, completion_tokens=10 * i, cost_usd=Decimal("0.00012345") * i,
            latency_ms=100 + 50 * i, ttft_ms=20 + i,
        )
        for i, model in enumerate(["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o"])
    ]


def test_worker_recomputes_a_bucket_idempotently(worker, client):
    tenant = tenant_create(slug="acme")
    key, _ = api_key_create(tenant=tenant)
    records = records_create(tenant=tenant, key=key, start=HOUR)

    def run_bucket() -> int:
        result = client.send_task(
            "accounting.tasks.rollup_bucket_task", args=["hour", HOUR.isoformat()], queue=worker.queue
        )
        # The gateway stores no task results (nothing reads them): the worker's log line says the
        # task's return value.
        done = re.compile(rf"\[{re.escape(result.id)}\] succeeded in [0-9.e-]+s: (\d+)")
        match = wait_for(lambda: done.search(worker.log()), worker=worker, what="task success in the log")
        return int(match.group(1))

    assert run_bucket() == 5  # total, one key, two models, one endpoint (no task, tag or end user)
    total = UsageRollup.objects.get(granularity="hour", bucket_start=HOUR, tenant=tenant, dimension="total")
    assert (total.requests, total.errors, total.errors_by_class) == (5, 1, {"timeout": 1})
    assert total.prompt_tokens == sum(r.prompt_tokens for r in records)
    assert total.cost_usd == sum((r.cost_usd for r in records), Decimal(0))
    # From the sketch: within 1 % of the values of rank 2 and 3 of 100, 150, 200, 250, 300.
    assert total.latency_p50_ms == pytest.approx(200, rel=0.01)
    assert total.latency_p95_ms == pytest.approx(250, rel=0.01)
    before = list(UsageRollup.objects.order_by("pk").values_list("pk", "dimension", "value", "requests", "cost_usd"))

    assert run_bucket() == 5
    after = list(UsageRollup.objects.order_by("pk").values_list("pk", "dimension", "value", "requests", "cost_usd"))
    assert after == before


def test_worker_runs_the_beat_task(worker, client):
    tenant = tenant_create(slug="acme")
    key, _ = api_key_create(tenant=tenant)
    now = timezone.now()
    records_create(tenant=tenant, key=key, start=now - timedelta(minutes=10))
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)

    client.send_task("accounting.tasks.rollup_recent_task", queue=worker.queue)
    rows = UsageRollup.objects.filter(granularity="day", tenant=tenant, dimension="total")
    # Records of the last 10 minutes lie in today, or (just after midnight) partly in yesterday.
    recent = rows.filter(bucket_start__gte=today - timedelta(days=1))
    wait_for(
        lambda: sum(recent.values_list("requests", flat=True)) == 5,
        worker=worker, what="daily rollup of the beat task",
    )


def test_worker_rolls_feedback_up(worker, client):
    from feedback.models import FeedbackRollup
    from feedback.services import feedback_submit, submission_parse

    tenant = tenant_create(slug="acme")
    key, _ = api_key_create(tenant=tenant)
    records = records_create(tenant=tenant, key=key, start=HOUR)
    for n, record in enumerate(records):
        record.response_id = f"chatcmpl-{n}"
        record.save(update_fields=["response_id"])
        feedback_submit(tenant_id=tenant.pk, submission=submission_parse(
            {"response_id": record.response_id, "rating": "up" if n % 2 else "down"}
        ))

    client.send_task("feedback.tasks.feedback_rollup_recent_task", queue=worker.queue)
    rows = FeedbackRollup.objects.filter(granularity="day", tenant=tenant)
    wait_for(lambda: rows.count() == 3, worker=worker, what="daily feedback rollups (total and two models)")
    total = FeedbackRollup.objects.get(granularity="hour", bucket_start=HOUR, tenant=tenant, dimension="total")
    assert (total.feedback, total.ratings, total.thumbs_up, total.thumbs_down) == (5, 5, 2, 3)
    by_model = dict(
        FeedbackRollup.objects.filter(granularity="day", tenant=tenant, dimension="model").values_list("value", "ratings")
    )
    assert by_model == {"gpt-4o": 3, "gpt-4o-mini": 2}
