"""Two gateway processes against one Redis share one circuit breaker (and one round-robin turn)."""

from __future__ import annotations

import os

import httpx
import openai
import pytest
import redis

from tests.conftest import stop_process
from tests.e2e.conftest import (
    database_create,
    database_drop,
    deployment_env,
    fake_start,
    gateway_start,
    manage,
)

pytestmark = pytest.mark.e2e

CONFIG = """
providers:
  - name: fake-a
    type: openai
    api_base: http://127.0.0.1:{port_a}/v1
    api_key: sk-fake-a
    models: [{{alias: gpt-4o-mini, input_price_per_million: 0.15, output_price_per_million: 0.6}}]
  - name: fake-b
    type: openai
    api_base: http://127.0.0.1:{port_b}/v1
    api_key: sk-fake-b
    models: [{{alias: gpt-4o-mini, input_price_per_million: 0.15, output_price_per_million: 0.6}}]
tenants:
  - slug: acme
routes:
  - model: smart
    strategy: fallback
    retries: 0
    breaker: {{failure_threshold: 2, cooldown_seconds: 300}}
    deployments:
      - {{provider: fake-a, model: gpt-4o-mini, priority: 0}}
      - {{provider: fake-b, model: gpt-4o-mini, priority: 1}}
  - model: rotating
    strategy: round_robin
    deployments:
      - {{provider: fake-a, model: gpt-4o-mini}}
      - {{provider: fake-b, model: gpt-4o-mini}}
"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two gateways (one database, one Redis) in front of fake-a and fake-b."""
    database_url, name = database_create()
    env = deployment_env(database_url, name)
    processes = []
    try:
        fake_a, port_a = fake_start(env)
        fake_b, port_b = fake_start(env)
        processes += [fake_a, fake_b]
        manage(env, "migrate", "--noinput")
        config = tmp_path_factory.mktemp("pair") / "gateway.yaml"
        config.write_text(CONFIG.format(port_a=port_a, port_b=port_b))
        manage(env, "import_config", str(config))
        key = manage(env, "create_api_key", "acme").strip().splitlines()[-1]
        logs = tmp_path_factory.mktemp("pair-logs")
        one, url_one = gateway_start(env, logs / "one.log")
        processes.append(one)
        two, url_two = gateway_start(env, logs / "two.log")
        processes.append(two)
        yield {
            "key": key, "gateways": (url_one, url_two), "redis_prefix": env["GATEWAY_REDIS_PREFIX"],
            "fakes": {"fake-a": f"http://127.0.0.1:{port_a}", "fake-b": f"http://127.0.0.1:{port_b}"},
        }
    finally:
        for process in processes:
            stop_process(process)
        database_drop(name)


def chat(pair, gateway: int, model: str):
    client = openai.OpenAI(base_url=f"{pair['gateways'][gateway]}/v1", api_key=pair["key"], max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )


def fake_requests(pair, name: str) -> int:
    return httpx.get(f"{pair['fakes'][name]}/_fake/stats").json()["requests"]


def test_a_breaker_opened_by_one_process_is_honoured_by_the_other(pair):
    httpx.put(f"{pair['fakes']['fake-a']}/_fake/directive", json={"directive": "status=500"}).raise_for_status()
    try:
        for _ in range(2):  # two failures seen by gateway one open fake-a's breaker
            assert chat(pair, 0, "smart").headers["x-gateway-provider"] == "fake-b"
        calls = fake_requests(pair, "fake-a")
        response = chat(pair, 1, "smart")  # gateway two has never seen fake-a fail itself
        assert response.headers["x-gateway-provider"] == "fake-b"
        assert response.headers["x-gateway-attempts"] == "1"
        assert fake_requests(pair, "fake-a") == calls  # skipped, not called
    finally:
        httpx.post(f"{pair['fakes']['fake-a']}/_fake/reset")
        shared = redis.Redis.from_url(os.environ["REDIS_URL"])
        for key in shared.scan_iter(f"{pair['redis_prefix']}:breaker:*"):
            shared.delete(key)


def test_round_robin_alternates_across_both_processes(pair):
    served = [chat(pair, turn % 2, "rotating").headers["x-gateway-provider"] for turn in range(6)]
    # One shared counter: consecutive requests alternate whichever process answers them.
    assert all(a != b for a, b in zip(served, served[1:]))
