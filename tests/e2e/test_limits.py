"""Budgets and rate limits hold across two gateway processes sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import math
import time
from decimal import Decimal

import httpx
import psycopg
import pytest

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
  - name: fake
    type: openai
    api_base: http://127.0.0.1:{port}/v1
    api_key: sk-fake
    models: [{{alias: gpt-4o-mini, input_price_per_million: 1000, output_price_per_million: 1000}}]
tenants:
  - slug: budgeted
    budget: {{amount_usd: {budget}, period: monthly, hard: true}}
  - slug: limited
    rate_limit: {{rpm: 10}}
  - slug: structured
    budget: {{amount_usd: {structured_budget}, period: monthly, hard: true}}
"""
# What one request reserves: 7 prompt tokens as the gateway counts "hi" (3 per message, 3 for
# the reply, 1 for the text) plus max_tokens=20, at $1000 per million tokens.
RESERVE = Decimal("0.027")
BUDGET = RESERVE * 10
# Structured requests whose answers are cut at max_tokens=8 (so not JSON) cost two calls each
# (the answer and its repair): about 0.07, where reserving the first call alone would hold 0.027.
STRUCTURED_BUDGET = Decimal("1.0")
PERSON = {"type": "json_schema", "json_schema": {"name": "person", "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"]}}}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    database_url, name = database_create()
    env = deployment_env(database_url, name)
    processes = []
    try:
        fake, port = fake_start(env)
        processes.append(fake)
        manage(env, "migrate", "--noinput")
        config = tmp_path_factory.mktemp("limits") / "gateway.yaml"
        config.write_text(CONFIG.format(port=port, budget=BUDGET, structured_budget=STRUCTURED_BUDGET))
        manage(env, "import_config", str(config))
        keys = {
            slug: manage(env, "create_api_key", slug).strip().splitlines()[-1]
            for slug in ("budgeted", "limited", "structured")
        }
        logs = tmp_path_factory.mktemp("limits-logs")
        urls = []
        for index in range(2):
            process, url = gateway_start(env, logs / f"gateway-{index}.log")
            processes.append(process)
            urls.append(url)
        yield {"urls": urls, "keys": keys, "database_url": database_url, "fake": f"http://127.0.0.1:{port}"}
    finally:
        for process in processes:
            stop_process(process)
        database_drop(name)


async def _send(client: httpx.AsyncClient, url: str, key: str, body: dict | None = None) -> httpx.Response:
    return await client.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=body or {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )


async def _burst(deployment, slug: str, count: int, body: dict | None = None) -> list[httpx.Response]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:
        return await asyncio.gather(*(
            _send(client, deployment["urls"][i % 2], deployment["keys"][slug], body) for i in range(count)
        ))


def _spend(deployment, slug: str) -> tuple[int, Decimal, Decimal, Decimal]:
    """The tenant's records, the sum of their costs, and its budget period's spend and reservations."""
    with psycopg.connect(deployment["database_url"]) as conn:
        records, spent_by_records = conn.execute(
            "SELECT count(*), coalesce(sum(cost_usd), 0) FROM accounting_usagerecord r"
            " JOIN accounting_tenant t ON t.id = r.tenant_id WHERE t.slug = %s", (slug,)
        ).fetchone()
        spent, reserved = conn.execute(
            "SELECT p.spent_usd, p.reserved_usd FROM accounting_budgetperiod p"
            " JOIN accounting_budget b ON b.id = p.budget_id JOIN accounting_tenant t ON t.id = b.tenant_id"
            " WHERE t.slug = %s", (slug,)
        ).fetchone()
    return records, spent_by_records, spent, reserved


def test_fifty_concurrent_requests_never_overspend_a_hard_budget(deployment):
    httpx.put(f"{deployment['fake']}/_fake/directive", json={"directive": "delay_ms=300"}).raise_for_status()
    try:
        responses = asyncio.run(_burst(deployment, "budgeted", 50))
    finally:
        httpx.delete(f"{deployment['fake']}/_fake/directive")
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 50
    assert len(ok) >= 10 and len(refused) >= 20
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    with psycopg.connect(deployment["database_url"]) as conn:
        (successes,) = conn.execute(
            "SELECT count(*) FROM accounting_usagerecord r JOIN accounting_tenant t ON t.id = r.tenant_id"
            " WHERE t.slug = 'budgeted' AND status = 'success'"
        ).fetchone()
    records, spent_by_records, spent, reserved = _spend(deployment, "budgeted")
    assert records == 50 and successes == len(ok)  # every answered request has its record
    assert spent == spent_by_records  # spend is exactly the sum of the records
    assert reserved == 0  # nothing left held once every request settled
    assert spent <= BUDGET


def test_concurrent_structured_repairs_never_overspend_a_hard_budget(deployment):
    """Each request may make two upstream calls (its answer and the repair of an answer that is
    not the JSON asked for): its reservation covers both, so spend stays within the budget."""
    body = {"model": "gpt-4o-mini", "max_tokens": 8, "response_format": PERSON,
            "messages": [{"role": "user", "content": "[[fake bad_json]] Describe someone"}]}
    responses = asyncio.run(_burst(deployment, "structured", 30, body))
    records, spent_by_records, spent, reserved = _spend(deployment, "structured")
    assert records == 30 and spent == spent_by_records and reserved == 0
    assert spent <= STRUCTURED_BUDGET
    assert {r.status_code for r in responses} <= {429, 502}  # answers cut at 8 tokens never parse
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    assert 0 < len(refused) < 30


def test_two_processes_enforce_one_rpm_limit(deployment):
    started = time.monotonic()
    responses = asyncio.run(_burst(deployment, "limited", 30))
    elapsed = time.monotonic() - started
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    # 10 per minute refills one request every 6 s: allow for what refilled while the burst ran.
    assert 10 <= len(ok) <= 10 + math.floor(elapsed / 6)
    assert len(limited) == 30 - len(ok)
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in limited)
    assert all(int(r.headers["retry-after"]) >= 1 for r in limited)
    assert all(r.headers["x-ratelimit-limit-requests"] == "10" for r in ok)
    assert {r.headers["x-ratelimit-remaining-requests"] for r in limited} == {"0"}
