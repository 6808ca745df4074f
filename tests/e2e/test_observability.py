"""Observability of a real deployment: two uvicorn workers sharing one PROMETHEUS_MULTIPROC_DIR report
the sum of both on /metrics; the JSON logs of a full set of requests hold no key and no prompt; /ready
fails while a (private) Redis is stopped and recovers when it is back."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, stop_process
from tests.e2e.conftest import (
    database_create,
    database_drop,
    deployment_env,
    fake_start,
    gateway_start,
    manage,
    redis_start,
    wait_for,
)

pytestmark = pytest.mark.e2e

PROVIDER_KEYS = {
    # Not shaped like an `sk-` key, so the formatter's redaction cannot hide a leak of it.
    "OBS_DEAD_KEY": "deadprovider-key-7f3a9c1e5b",
    "OBS_FAKE_KEY": "fakeprovider-key-2c8d4e6f0a",
}
ANTHROPIC_KEY = "anthropic-upstream-key-93bd17"
PROMPT = "quokka-marmalade-7781 tell me about the lighthouse"

CONFIG = """
providers:
  - name: dead
    type: openai
    api_base: http://127.0.0.1:{dead_port}/v1
    api_key: env:OBS_DEAD_KEY
    models: [{{alias: dead-mini, upstream: gpt-4o-mini, input_price_per_million: 0.15, output_price_per_million: 0.6}}]
  - name: fake
    type: openai
    api_base: http://127.0.0.1:{fake_port}/v1
    api_key: env:OBS_FAKE_KEY
    models:
      - {{alias: gpt-4o-mini, input_price_per_million: 0.15, output_price_per_million: 0.6}}
      - {{alias: text-embedding-3-small, mode: embedding, input_price_per_million: 0.02}}
  - name: fake-anthropic
    type: anthropic
    api_base: http://127.0.0.1:{fake_port}
    api_key: {anthropic_key}
    models: [{{alias: claude-haiku-4-5, input_price_per_million: 1.0, output_price_per_million: 5.0}}]
tenants:
  - slug: acme
routes:
  - model: smart
    strategy: fallback
    retries: 0
    breaker: {{failure_threshold: 1000, cooldown_seconds: 1}}
    deployments:
      - {{provider: dead, model: dead-mini, priority: 0}}
      - {{provider: fake, model: gpt-4o-mini, priority: 1}}
"""


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Two gateway processes (one database, one Redis, one multiprocess metrics folder)."""
    database_url, name = database_create()
    metrics_dir = tmp_path_factory.mktemp("prometheus")
    env = deployment_env(database_url, name, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), **PROVIDER_KEYS)
    processes = []
    try:
        fake, fake_port = fake_start(env)
        processes.append(fake)
        manage(env, "migrate", "--noinput")
        config = tmp_path_factory.mktemp("obs") / "gateway.yaml"
        config.write_text(CONFIG.format(dead_port=free_port(), fake_port=fake_port, anthropic_key=ANTHROPIC_KEY))
        manage(env, "import_config", str(config))
        key = manage(env, "create_api_key", "acme").strip().splitlines()[-1]
        logs = tmp_path_factory.mktemp("obs-logs")
        urls = []
        for index in (1, 2):
            process, url = gateway_start(env, logs / f"gateway-{index}.log")
            processes.append(process)
            urls.append(url)
        yield {"key": key, "urls": urls, "logs": [logs / "gateway-1.log", logs / "gateway-2.log"],
               "env": env, "database_url": database_url}
    finally:
        for process in processes:
            stop_process(process)
        database_drop(name)


def scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def value(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_of_one_worker_sum_both_workers(workers):
    one, two = workers["urls"]
    labels = {"tenant": "acme", "model": "gpt-4o-mini", "provider": "fake", "status": "success"}
    before = value(scrape(one), "gateway_requests_total", **labels)
    for url, count in ((one, 3), (two, 2)):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=workers["key"], max_retries=0)
        for _ in range(count):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    from_one, from_two = scrape(one), scrape(two)
    assert value(from_one, "gateway_requests_total", **labels) == before + 5
    assert value(from_two, "gateway_requests_total", **labels) == before + 5
    assert value(from_one, "gateway_request_duration_seconds_count", model="gpt-4o-mini") >= 5
    assert value(from_one, "gateway_cost_usd_total", tenant="acme") > 0
    assert value(from_one, "gateway_circuit_breaker_state", provider="fake") == 0


def test_logs_of_a_full_set_of_requests_hold_no_key_and_no_prompt(workers):
    url = workers["urls"][0]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=workers["key"], max_retries=0)
    messages = [{"role": "user", "content": PROMPT}]
    ok = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, extra_headers={"x-request-id": "obs-e2e-success"}
    )
    assert ok.headers["x-request-id"] == "obs-e2e-success"
    failover = client.chat.completions.with_raw_response.create(model="smart", messages=messages)
    assert failover.headers["x-gateway-attempts"] == "2" and failover.headers["x-gateway-provider"] == "fake"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"[[fake status=400]] {PROMPT}"}]
        )
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    assert chunks
    with pytest.raises(openai.APIError):  # a stream cut by the provider ends with an error event
        list(client.chat.completions.create(
            model="gpt-4o-mini", stream=True,
            messages=[{"role": "user", "content": f"[[fake disconnect_after=2 chunks=8]] {PROMPT}"}],
        ))
    client.embeddings.create(model="text-embedding-3-small", input=PROMPT)
    anthropic.Anthropic(base_url=url, api_key=workers["key"], max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
    )
    wrong_key = "sk-gw-" + "w" * 40
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key=wrong_key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=messages
        )

    text = _log_text(workers["logs"][0], until='"status": 401')
    for secret in (*PROVIDER_KEYS.values(), ANTHROPIC_KEY, workers["key"], wrong_key, "quokka-marmalade"):
        assert secret not in text, f"{secret!r} is in the gateway's log"
    # Every line of the gateway's loggers is JSON; daphne's own access log (plain text, to stdout,
    # method, path and status only) is the rest, scanned for secrets above like everything else.
    lines = [line for line in text.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert all(line.startswith("{") or '" 200 ' in line or '" 40' in line for line in lines)
    mine = [entry for entry in entries if entry.get("request_id") == "obs-e2e-success"]
    assert {"gateway.access", "routing.record"} <= {entry["logger"] for entry in mine}
    records = [entry for entry in entries if entry["logger"] == "routing.record"]
    assert {"success", "error"} <= {entry["status"] for entry in records}
    assert any(entry["model"] == "smart" and entry["attempts"] == 2 for entry in records)


def _log_text(path, *, until: str, timeout: float = 10.0) -> str:
    """The log file once the line marking the last request is in it (lines are written as they come)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text()
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def _ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/ready", timeout=10)


def test_ready_fails_while_redis_is_stopped_and_recovers(workers, tmp_path):
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    redis_process = redis_start(port)
    env = {**workers["env"], "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url}
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    gateway, url = gateway_start(env, tmp_path / "ready.log")
    try:
        first = _ready(url)
        assert first.status_code == 200, first.text
        assert first.json()["checks"]["redis"]["status"] == "ok"
        stop_process(redis_process)
        down = wait_for(lambda: (r := _ready(url)).status_code == 503 and r, what="/ready to fail")
        checks = down.json()["checks"]
        assert checks["redis"]["status"] == "error" and checks["celery_broker"]["status"] == "error"
        assert checks["database"]["status"] == checks["migrations"]["status"] == "ok"
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # alive, not ready
        redis_process = redis_start(port)
        back = wait_for(lambda: (r := _ready(url)).status_code == 200 and r, what="/ready to recover")
        assert back.json()["status"] == "ok"
    finally:
        stop_process(gateway)
        stop_process(redis_process)
