"""OpenAI's Files and Batches API end to end: the official openai SDK against the gateway under
uvicorn, a real Celery worker (its own process, its own queue) running the lines through the
pipeline to the fake provider, PostgreSQL and Redis. One deployment for the module, configured as
an operator does it; each test makes its own batches."""

from __future__ import annotations

import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ROOT, stop_process
from tests.e2e.conftest import (
    database_create,
    database_drop,
    deployment_env,
    fake_start,
    gateway_start,
    manage,
)

CONFIG = """
providers:
  - name: fake
    type: openai
    api_base: http://127.0.0.1:{port}/v1
    api_key: sk-e2e-batches-0001
    models:
      - alias: gpt-4o-mini
        input_price_per_million: 0.15
        output_price_per_million: 0.60
        context_window: 128000
      - alias: text-embedding-3-small
        input_price_per_million: 0.02
tenants:
  - slug: acme
    name: Acme Corp
  - slug: other
    name: Other Corp
  - slug: frugal
    name: Frugal Corp
    budget: {{amount_usd: 0.01, period: monthly, hard: true}}
  - slug: limited
    name: Limited Corp
    rate_limit: {{rpm: 2}}
"""
# A key per tenant and an operator's staff token, made in one process (each manage.py start costs
# seconds on a busy machine); printed as JSON.
CREDENTIALS = """
import json
from django.contrib.auth.models import User
from accounting.models import Tenant
from accounting.services import api_key_create
from operators.services import staff_token_create
keys = {t.slug: api_key_create(tenant=t, name="e2e")[1] for t in Tenant.objects.all()}
keys["operator"] = staff_token_create(user=User.objects.create_user("ops", is_staff=True, is_superuser=True))[1]
print(json.dumps(keys))
"""
MAX_FILE_BYTES = 300_000
BATCH_DEADLINE = 90.0


@dataclass
class Deployment:
    env: dict
    base_url: str
    database_url: str
    fake_url: str
    keys: dict[str, str]  # the tenants' keys, and "operator": a staff token
    queue: str
    log_dir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def client(self, tenant: str = "acme") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.keys[tenant], max_retries=0)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def worker_start(self) -> subprocess.Popen:
        log = open(self.log_dir / f"worker-{len(self.workers)}.log", "w")
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "gateway_site", "worker", "--pool=solo", "-Q", self.queue,
             "--hostname", f"{self.queue}-{len(self.workers)}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel=INFO"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.workers.append(process)
        return process

    def worker_log(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in sorted(self.log_dir.glob("worker-*")))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    database_url, name = database_create()
    var_dir = tmp_path_factory.mktemp("batches-var")
    queue = "celery"  # the batches' queue: the default one
    env = deployment_env(
        database_url, name, GATEWAY_VAR_DIR=str(var_dir), CELERY_BROKER_URL=os.environ["REDIS_URL"],
        GATEWAY_BATCH_MAX_FILE_BYTES=str(MAX_FILE_BYTES), LOG_LEVEL="INFO",
    )
    fake, port = fake_start(env)
    processes = [fake]
    deployment = None
    try:
        manage(env, "migrate", "--noinput")
        config = var_dir / "gateway.yaml"
        config.write_text(CONFIG.format(port=port))
        manage(env, "import_config", str(config))
        keys = json.loads(manage(env, "shell", "-c", CREDENTIALS).strip().splitlines()[-1])
        log_dir = tmp_path_factory.mktemp("batches-logs")
        gateway, base_url = gateway_start(env, log_dir / "gateway.log")
        processes.append(gateway)
        deployment = Deployment(env=env, base_url=base_url, database_url=database_url,
                                fake_url=f"http://127.0.0.1:{port}", keys=keys, queue=queue, log_dir=log_dir)
        deployment.worker_start()
        yield deployment
    finally:
        for worker in deployment.workers if deployment else []:
            worker.send_signal(signal.SIGQUIT)  # a cold shutdown: its queue is dropped below
            worker.wait()
        for process in processes:
            stop_process(process)
        import redis

        with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
            client.delete(queue, "unacked", "unacked_index")  # what the killed worker held
        database_drop(name)


def jsonl(rows: list) -> bytes:
    return b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)


def chat_line(custom_id: str, text: str, *, max_tokens: int | None = 5, url: str = "/v1/chat/completions") -> dict:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def upload(client: openai.OpenAI, rows: list) -> str:
    return client.files.create(file=("batch.jsonl", io.BytesIO(jsonl(rows))), purpose="batch").id


def wait_batch(deployment: Deployment, client: openai.OpenAI, batch_id: str, *, until, what: str):
    deadline = time.monotonic() + BATCH_DEADLINE
    while True:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        if time.monotonic() > deadline:
            pytest.fail(f"batch {batch_id} never {what}: {batch.status} {batch.request_counts}\n"
                        f"{deployment.worker_log()}")
        time.sleep(0.1)


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def batch_records(deployment: Deployment, batch_id: str) -> list[tuple]:
    """The batch's UsageRecords (tagged `batch:<id>`): (request_id, status)."""
    return deployment.query(
        "select request_id::text, status from accounting_usagerecord where tags::jsonb ? %s", (f"batch:{batch_id}",))


def test_a_batch_runs_to_completed_with_its_output_and_error_files(deployment):
    client = deployment.client()
    rows = [chat_line(f"ok-{i}", f"Say something about the number {i}.") for i in range(6)]
    rows += [
        b"{not json",
        chat_line("other-url", "hello", url="/v1/embeddings"),
        {"custom_id": "bad-body", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}},
        chat_line("ok-0", "a second line with the same custom_id"),
    ]
    file_id = upload(client, rows)
    assert client.files.retrieve(file_id).purpose == "batch"
    assert file_id in [f.id for f in client.files.list()]
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"job": "e2e"})
    assert batch.status == "validating" and batch.metadata == {"job": "e2e"}
    done = wait_batch(deployment, client, batch.id, until=lambda b: b.status == "completed", what="completed")
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (10, 6, 4)
    assert done.in_progress_at and done.finalizing_at and done.completed_at

    output = file_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"ok-{i}" for i in range(6)]
    for line in output:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert line["response"]["body"]["object"] == "chat.completion"
        assert line["response"]["body"]["usage"]["completion_tokens"] == 5
    errors = {line["custom_id"]: line for line in file_lines(client, done.error_file_id)}
    assert set(errors) == {None, "other-url", "bad-body", "ok-0"}
    assert errors[None]["error"]["line"] == 7 and "not valid JSON" in errors[None]["error"]["message"]
    assert "endpoint" in errors["other-url"]["error"]["message"]
    assert errors["ok-0"]["error"]["line"] == 10 and "earlier line" in errors["ok-0"]["error"]["message"]
    bad = errors["bad-body"]["response"]
    assert bad["status_code"] == 400 and bad["body"]["error"]["param"] == "messages"

    # One record per line that reached the pipeline, each the line's own request id.
    records = batch_records(deployment, batch.id)
    assert sorted(status for _, status in records) == ["error"] + ["success"] * 6
    assert {line["response"]["request_id"] for line in output} <= {request_id for request_id, _ in records}

    assert batch.id in [b.id for b in client.batches.list(limit=5)]
    client.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_embeddings_and_responses_batches(deployment):
    client = deployment.client()
    embed = upload(client, [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                             "body": {"model": "text-embedding-3-small", "input": f"text {i}"}} for i in range(2)])
    respond = upload(client, [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
                               "body": {"model": "gpt-4o-mini", "input": f"hello {i}", "max_output_tokens": 4}}
                              for i in range(2)])
    batches = [client.batches.create(input_file_id=embed, endpoint="/v1/embeddings", completion_window="24h"),
               client.batches.create(input_file_id=respond, endpoint="/v1/responses", completion_window="24h")]
    embedded, responded = (
        wait_batch(deployment, client, b.id, until=lambda b: b.status == "completed", what="completed")
        for b in batches
    )
    vectors = file_lines(client, embedded.output_file_id)
    assert [line["response"]["body"]["object"] for line in vectors] == ["list", "list"]
    assert len(vectors[0]["response"]["body"]["data"][0]["embedding"]) == 1536
    answers = file_lines(client, responded.output_file_id)
    assert [line["response"]["body"]["object"] for line in answers] == ["response", "response"]
    assert answers[0]["response"]["body"]["usage"]["output_tokens"] == 4
    assert len(batch_records(deployment, batches[1].id)) == 2


def test_bad_uploads_and_batches_are_refused_in_openais_error_shape(deployment):
    client, other = deployment.client(), deployment.client("other")
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.files.create(file=("empty.jsonl", io.BytesIO(b"\n")), purpose="batch")
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line("a", "hi")]))), purpose="fine-tune")
    assert wrong_purpose.value.body["param"] == "purpose"
    big = jsonl([chat_line(f"c{i}", "x" * 1000) for i in range(MAX_FILE_BYTES // 1000)])
    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="batch")
    assert too_big.value.status_code == 413

    file_id = upload(client, [chat_line("a", "hi")])
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(file_id)
    with pytest.raises(openai.NotFoundError) as foreign:
        other.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert foreign.value.body["param"] == "input_file_id"
    with pytest.raises(openai.BadRequestError) as endpoint:
        client.batches.create(input_file_id=file_id, endpoint="/v1/completions", completion_window="24h")
    assert endpoint.value.body["param"] == "endpoint"
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch.id)
    assert other.batches.list().data == []
    wait_batch(deployment, client, batch.id, until=lambda b: b.status == "completed", what="completed")


def test_a_batch_over_the_budget_is_refused_and_lines_meet_an_exhausted_budget(deployment):
    frugal = deployment.client("frugal")
    # Without max_tokens each line may use the model's whole context window: far over $0.01.
    costly = upload(frugal, [chat_line(f"c{i}", "hi", max_tokens=None) for i in range(3)])
    with pytest.raises(openai.BadRequestError) as refused:
        frugal.batches.create(input_file_id=costly, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.body["code"] == "budget_exceeded"
    assert "estimated cost" in refused.value.body["message"] and "of $0.01" in refused.value.body["message"]

    # Within the budget at creation; the operator then lowers it: the lines not sent yet fail alone.
    operator = operator_client(deployment)
    budget_id = deployment.query("select b.id from accounting_budget b join accounting_tenant t on t.id = b.tenant_id "
                                 "where t.slug = 'frugal'")[0][0]
    lines = [chat_line(f"s{i}", f"[[fake delay_ms=500]] line {i}") for i in range(24)]
    batch = frugal.batches.create(input_file_id=upload(frugal, lines), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_batch(deployment, frugal, batch.id, until=lambda b: b.request_counts.completed >= 1, what="started")
    operator.patch(f"/v1/budgets/{budget_id}", json={"amount_usd": "0.000001"}).raise_for_status()
    done = wait_batch(deployment, frugal, batch.id, until=lambda b: b.status == "completed", what="completed")
    errors = file_lines(frugal, done.error_file_id)
    assert done.request_counts.completed >= 1 and done.request_counts.completed + len(errors) == 24
    assert errors and {line["response"]["body"]["error"]["code"] for line in errors} == {"budget_exceeded"}


def operator_client(deployment: Deployment) -> httpx.Client:
    return httpx.Client(base_url=deployment.base_url, headers={"Authorization": f"Bearer {deployment.keys['operator']}"})


def test_cancel_stops_new_lines_and_lets_those_in_flight_finish(deployment):
    client = deployment.client()
    lines = [chat_line(f"l{i}", f"[[fake delay_ms=300]] line {i}") for i in range(24)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_batch(deployment, client, batch.id, until=lambda b: b.request_counts.completed >= 2, what="started")
    assert client.batches.cancel(batch.id).status == "cancelling"
    done = wait_batch(deployment, client, batch.id, until=lambda b: b.status == "cancelled", what="cancelled")
    output, errors = file_lines(client, done.output_file_id), file_lines(client, done.error_file_id)
    assert 2 <= len(output) < 24 and len(output) + len(errors) == 24
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    # What was sent was answered and recorded, once; nothing after the cancel was sent.
    assert sorted(r for r, _ in batch_records(deployment, batch.id)) == sorted(
        line["response"]["request_id"] for line in output)
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)


def test_a_worker_killed_mid_batch_is_resumed_by_the_next_without_a_line_twice(deployment):
    client = deployment.client()
    httpx.delete(f"{deployment.fake_url}/_fake/ledger").raise_for_status()
    lines = [chat_line(f"k{i}", f"[[fake delay_ms=250]] line {i}") for i in range(20)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_batch(deployment, client, batch.id, until=lambda b: b.request_counts.completed >= 3, what="started")
    worker = deployment.workers[-1]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert client.batches.retrieve(batch.id).status == "in_progress"
    deployment.worker_start()
    done = wait_batch(deployment, client, batch.id, until=lambda b: b.status == "completed", what="completed")

    output = file_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"k{i}" for i in range(20))
    assert done.request_counts.completed == 20 and done.error_file_id is None
    records = batch_records(deployment, batch.id)
    assert len(records) == 20 and {status for _, status in records} == {"success"}
    assert {line["response"]["request_id"] for line in output} == {r for r, _ in records}
    # The provider answered each line once: a line cut by the kill was never answered.
    ledger = httpx.get(f"{deployment.fake_url}/_fake/ledger").json()["data"]
    answered = [entry["request_id"] for entry in ledger if entry["ended"] == "completed"]
    assert sorted(answered) == sorted(r for r, _ in records)


def test_batch_lines_leave_the_tenant_its_share_of_the_rate_limit(deployment):
    """rpm 2 and a share of 50 %: the batch's lines get one request a minute; the live request
    still finds the other."""
    limited = deployment.client("limited")
    batch = limited.batches.create(input_file_id=upload(limited, [chat_line(f"q{i}", f"line {i}") for i in range(3)]),
                                   endpoint="/v1/chat/completions", completion_window="24h")
    wait_batch(deployment, limited, batch.id, until=lambda b: b.request_counts.completed >= 1, what="started")
    answer = limited.chat.completions.create(model="gpt-4o-mini", max_tokens=3,
                                             messages=[{"role": "user", "content": "live"}])
    assert answer.choices[0].message.content
    limited.batches.cancel(batch.id)
    done = wait_batch(deployment, limited, batch.id, until=lambda b: b.status == "cancelled", what="cancelled")
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)


def test_a_live_requests_latency_stays_in_its_range_while_a_large_batch_runs(deployment):
    client = deployment.client()

    def live_latency() -> float:
        timings = []
        for i in range(15):
            started = time.perf_counter()
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                           messages=[{"role": "user", "content": f"live {i}"}])
            timings.append(time.perf_counter() - started)
        return statistics.median(timings)

    baseline = live_latency()
    lines = [chat_line(f"big{i}", f"[[fake delay_ms=20]] line {i}") for i in range(600)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_batch(deployment, client, batch.id, until=lambda b: b.request_counts.completed >= 20, what="started")
    during = live_latency()
    running = client.batches.retrieve(batch.id)
    client.batches.cancel(batch.id)
    assert running.status == "in_progress", "the batch ended before the live requests were measured"
    # Generous: CI machines run other work beside the test; a starved tenant would wait seconds.
    assert during < max(4 * baseline, baseline + 0.25), (baseline, during)
    wait_batch(deployment, client, batch.id, until=lambda b: b.status == "cancelled", what="cancelled")
