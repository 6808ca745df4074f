"""Issue 10, Faults: break things on purpose in a deployment shaped like production and check the
invariants of ARCHITECTURE.md. docs/reliability.md ("Faults") describes each scenario and keeps
the figures of the latest run; the tests assert the invariants, and print the figures.

One deployment for the module: `manage.py serve --workers 2` with the production settings, a
database of its own on the test PostgreSQL reached through a TCP proxy this test can cut, a private
`redis-server` this test can stop and restart (never the machine's shared one), and two fake
providers: `fake-a` takes the faults, `fake-b` is where failover goes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ROOT, free_port, stop_process
from tests.e2e.conftest import database_create, database_drop, fake_start, manage, redis_start, wait_for
from tests.e2e.test_deployment import HTTPS, Server, _holds_connection, production_env

pytestmark = pytest.mark.e2e

CONFIG = """
providers:
  - name: fake-a
    type: openai
    api_base: http://127.0.0.1:{port_a}/v1
    api_key: sk-chaos-fake-a
    models: [{{alias: gpt-4o-mini, input_price_per_million: 0.15, output_price_per_million: 0.6}}]
  - name: fake-b
    type: openai
    api_base: http://127.0.0.1:{port_b}/v1
    api_key: sk-chaos-fake-b
    models: [{{alias: gpt-4o-mini, input_price_per_million: 0.15, output_price_per_million: 0.6}}]
tenants:
  - slug: acme
    budget: {{amount_usd: 1000, period: monthly, hard: true}}
    rate_limit: {{rpm: 100000, tpm: 100000000}}
routes:
  - model: chaotic
    strategy: fallback
    retries: 0
    attempt_timeout_seconds: 1
    breaker: {{failure_threshold: 30000, cooldown_seconds: 1}}
    deployments:
      - {{provider: fake-a, model: gpt-4o-mini, priority: 0}}
      - {{provider: fake-b, model: gpt-4o-mini, priority: 1}}
  - model: steady
    strategy: fallback
    deployments:
      - {{provider: fake-b, model: gpt-4o-mini}}
"""
TENANT_SQL = "(SELECT id FROM accounting_tenant WHERE slug = 'acme')"


# --- the pieces of the deployment ----------------------------------------------------------------------
class TcpProxy:
    """A TCP proxy in a thread of its own, between the gateway and PostgreSQL, that can be cut
    (listener closed, every open connection aborted: the database is unreachable) and restored."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self.restore()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def restore(self) -> None:
        self._run(self._listen())

    def cut(self) -> None:
        self._run(self._cut())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._pipe_both, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _pipe_both(self, client_reader, client_writer) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
        )

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


@dataclass
class Chaos:
    env: dict
    api_key: str
    database_url: str
    server: Server
    proxy: TcpProxy
    redis_port: int
    redis_process: subprocess.Popen
    fakes: dict[str, str]

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def directive(self, fake: str, words: str) -> None:
        httpx.put(f"{self.fakes[fake]}/_fake/directive", json={"directive": words}, timeout=5).raise_for_status()

    def money(self) -> dict:
        """Budget state: held reservations, and spend against the sum of the records' costs. One
        statement, so one snapshot: read in several, a lease released between them (a worker
        releases its own a second after taking it) showed its amount still reserved with no row."""
        (reserved, spent, held, cost), = self.query(
            "SELECT (SELECT COALESCE(SUM(reserved_usd), 0) FROM accounting_budgetperiod),"
            " (SELECT COALESCE(SUM(spent_usd), 0) FROM accounting_budgetperiod),"
            " (SELECT COUNT(*) FROM accounting_budgetreservation),"
            f" (SELECT COALESCE(SUM(cost_usd), 0) FROM accounting_usagerecord WHERE tenant_id = {TENANT_SQL})"
        )
        return {"reserved": reserved, "held": held, "spent": spent, "records_cost": cost}


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chaos")
    database_url, name = database_create()
    direct = database_url.replace("postgresql://", "postgres://", 1)
    pg_port = int(direct.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = TcpProxy(pg_port)
    redis_port = free_port()
    redis_process = redis_start(redis_port)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = production_env(
        DATABASE_URL=direct.replace(f":{pg_port}/", f":{proxy.port}/"),
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        GATEWAY_REDIS_PREFIX=f"chaos:{name}",
        GATEWAY_READ_TIMEOUT="2",  # a stalled stream ends within the test's bound
        GATEWAY_STATIC_ROOT=str(tmp / "static"),
        GATEWAY_VAR_DIR=str(tmp / "var"),  # the record journal is its journal/
    )
    setup_env = {**env, "DATABASE_URL": direct}  # migrations and config go straight to the database
    processes = []
    try:
        fake_a, port_a = fake_start(env)
        fake_b, port_b = fake_start(env)
        processes += [fake_a, fake_b]
        manage(setup_env, "migrate", "--noinput")
        (tmp / "gateway.yaml").write_text(CONFIG.format(port_a=port_a, port_b=port_b))
        manage(setup_env, "import_config", str(tmp / "gateway.yaml"))
        api_key = manage(setup_env, "create_api_key", "acme", "--name", "chaos").strip().splitlines()[-1]
        server = Server(
            type("D", (), {"env": env}), tmp / "serve.log", "--workers", "2", "--no-collectstatic",
        )
        chaos = Chaos(
            env=setup_env, api_key=api_key, database_url=direct, server=server, proxy=proxy,
            redis_port=redis_port, redis_process=redis_process,
            fakes={"fake-a": f"http://127.0.0.1:{port_a}", "fake-b": f"http://127.0.0.1:{port_b}"},
        )
        yield chaos
        redis_process = chaos.redis_process  # the Redis outage test started another one
        server.stop()
    finally:
        for process in processes:
            stop_process(process)
        proxy.close()
        stop_process(redis_process)
        database_drop(name)


# --- the load and how each answer is counted ---------------------------------------------------------
@dataclass
class Outcome:
    kind: str  # answered | clear_error | gateway_5xx
    status: int = 0
    failed_over: bool = False
    response_id: str = ""
    detail: str = ""


@dataclass
class Figures:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.kind == kind)

    def summary(self) -> dict:
        return {
            "sent": len(self.outcomes),
            "answered": self.count("answered"),
            "failed_over": sum(1 for o in self.outcomes if o.kind == "answered" and o.failed_over),
            "clear_error": self.count("clear_error"),
            "gateway_5xx": self.count("gateway_5xx"),
            "statuses": dict(sorted(Counter(o.status for o in self.outcomes).items())),
        }


def clear_error(body: object) -> bool:
    """The API's error format, with a class that is not the gateway's own failure."""
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error
        and "code" in error and error.get("code") not in (None, "internal")
    )


def classify_plain(response: httpx.Response) -> Outcome:
    failed_over = int(response.headers.get("x-gateway-attempts") or 1) > 1
    try:
        body = response.json()
    except ValueError:
        return Outcome("gateway_5xx", response.status_code, detail=response.text[:200])
    if response.status_code == 200 and body.get("choices"):
        return Outcome("answered", 200, failed_over, body.get("id", ""))
    # A gateway 5xx: a 500 (the gateway's own failure), or any error not in the documented format.
    if response.status_code >= 400 and response.status_code != 500 and clear_error(body):
        return Outcome("clear_error", response.status_code, detail=body["error"]["code"])
    return Outcome("gateway_5xx", response.status_code, detail=json.dumps(body)[:200])


async def classify_stream(response: httpx.Response) -> Outcome:
    failed_over = int(response.headers.get("x-gateway-attempts") or 1) > 1
    if response.status_code != 200:
        await response.aread()
        return classify_plain(response)
    events, response_id = [], ""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append(line[6:])
    if events and events[-1] == "[DONE]":
        chunks = [json.loads(event) for event in events[:-1]]
        response_id = chunks[0].get("id", "") if chunks else ""
        errors = [chunk for chunk in chunks if "error" in chunk]
        if not errors:
            return Outcome("answered", 200, failed_over, response_id)
    else:
        chunks = [json.loads(event) for event in events]
        errors = [chunk for chunk in chunks if "error" in chunk]
        if not errors:  # the stream stopped with neither [DONE] nor an error event
            return Outcome("gateway_5xx", 200, detail="stream ended without [DONE] or an error event")
    if clear_error(errors[-1]):
        return Outcome("clear_error", 200, response_id=response_id, detail=errors[-1]["error"]["code"])
    return Outcome("gateway_5xx", 200, detail=json.dumps(errors[-1])[:200])


async def send_one(client: httpx.AsyncClient, *, model: str, stream: bool, directive: str = "") -> Outcome:
    body = {
        "model": model, "stream": stream, "max_tokens": 16,
        "messages": [{"role": "user", "content": f"{directive} chaos {uuid.uuid4().hex}"}],
    }
    try:
        if not stream:
            return classify_plain(await client.post("/v1/chat/completions", json=body))
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            return await classify_stream(response)
    except httpx.TransportError as exc:  # the gateway dropped the connection: its own failure
        return Outcome("gateway_5xx", 0, detail=f"{type(exc).__name__}: {exc}")


async def load(base_url: str, api_key: str, jobs: list[dict], *, concurrency: int = 6) -> Figures:
    figures, queue = Figures(), list(jobs)
    headers = {"Authorization": f"Bearer {api_key}", **HTTPS}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        async def worker():
            while queue:
                figures.outcomes.append(await send_one(client, **queue.pop()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return figures


def records_check(chaos: Chaos, figures: Figures, *, since_id: int) -> dict:
    """One UsageRecord per request sent (every one passed auth), one success per answer."""
    rows = wait_for(
        lambda: (r := chaos.query(
            "SELECT response_id, status FROM accounting_usagerecord WHERE id > %s", (since_id,)
        )) and len(r) >= len(figures.outcomes) and r,
        what="the usage records", timeout=15,
    )
    success = Counter(response_id for response_id, status in rows if status == "success")
    answered = [o.response_id for o in figures.outcomes if o.kind == "answered"]
    assert len(rows) == len(figures.outcomes), (len(rows), figures.summary())
    assert sum(success.values()) == len(answered)
    assert all(success[response_id] == 1 for response_id in answered)
    return {"records": len(rows), "success_records": sum(success.values())}


def last_record_id(chaos: Chaos) -> int:
    return chaos.query("SELECT COALESCE(MAX(id), 0) FROM accounting_usagerecord")[0][0]


def money_settled(chaos: Chaos) -> dict:
    """No reservation held, and the budget's spend is exactly the sum of the records' costs."""
    money = wait_for(
        lambda: (m := chaos.money())["held"] == 0 and m["spent"] == m["records_cost"] and m,
        what="reservations released and spend equal to the records", timeout=15,
    )
    assert money["reserved"] == 0
    return money


# --- upstream chaos ---------------------------------------------------------------------------------------
# Server-wide on fake-a (fake-b stays healthy, so failover has somewhere to go), one phase each.
UPSTREAM_FAULTS = [
    "status=500", "status=429 retry_after=1", "timeout", "disconnect_after=2", "malformed",
    "stall_after=2", "disconnect_after=0",
]
# Faults that hit before any of the answer: every request to `chaotic` fails over to fake-b.
BEFORE_THE_ANSWER = ["status=500", "status=429 retry_after=1", "timeout", "malformed", "disconnect_after=0"]


def test_upstream_chaos_under_load(chaos):
    since = last_record_id(chaos)
    figures, by_fault = Figures(), {}
    try:
        for fault in UPSTREAM_FAULTS:
            chaos.directive("fake-a", fault)
            jobs = [{"model": "chaotic", "stream": i % 2 == 1} for i in range(10)]
            # Failing everywhere: a clear error, whichever deployment answers it.
            jobs += [{"model": "chaotic", "stream": False, "directive": "[[fake status=503]]"},
                     {"model": "chaotic", "stream": True, "directive": "[[fake status=400]]"}]
            phase = asyncio.run(load(chaos.server.base_url, chaos.api_key, jobs))
            by_fault[fault] = phase.summary()
            figures.outcomes += phase.outcomes
    finally:
        chaos.directive("fake-a", "")
    summary = figures.summary()
    print("\nupstream chaos:", json.dumps(summary), "\nby fault:", json.dumps(by_fault, indent=1))
    gateway_failures = [o for o in figures.outcomes if o.kind == "gateway_5xx"]
    assert not gateway_failures, gateway_failures[:5]
    assert summary["answered"] > 0 and summary["failed_over"] > 0 and summary["clear_error"] > 0
    for fault in BEFORE_THE_ANSWER:
        assert by_fault[fault]["answered"] == by_fault[fault]["failed_over"] == 10, (fault, by_fault[fault])
    print("records:", records_check(chaos, figures, since_id=since), "money:", money_settled(chaos))


# --- Redis stopped and restarted mid-load ------------------------------------------------------------------
async def _load_until(base_url: str, api_key: str, stop: asyncio.Event, *, concurrency: int = 4) -> Figures:
    figures = Figures()
    headers = {"Authorization": f"Bearer {api_key}", **HTTPS}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        async def worker(n: int):
            i = 0
            while not stop.is_set():
                i += 1
                model = "chaotic" if (n + i) % 2 else "steady"
                figures.outcomes.append(await send_one(client, model=model, stream=(n + i) % 3 == 0))

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return figures


def _redis_keys(chaos: Chaos) -> list[str]:
    client = redis.Redis(port=chaos.redis_port, socket_timeout=1, decode_responses=True)
    return list(client.scan_iter(match=f"{chaos.env['GATEWAY_REDIS_PREFIX']}:*"))


KEPT_IN_PROCESS = ("rate limits", "circuit breakers", "deployment health")


async def _logged(chaos: Chaos, words: str, *, timeout: float = 30) -> None:
    """Until the server's log says `<what> <words>` for each of KEPT_IN_PROCESS, or `timeout` (the
    test's assertions then say which is missing)."""
    deadline = time.monotonic() + timeout
    while not all(f"{what} {words}" in chaos.server.log() for what in KEPT_IN_PROCESS):
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


def test_redis_stopped_and_restarted_mid_load(chaos):
    """The gateway keeps serving while its Redis is down (rate limits in process, cache bypassed,
    breakers and health in process) and goes back to Redis when it returns."""
    since = last_record_id(chaos)
    phases: dict[str, int] = {}

    async def scenario() -> Figures:
        stop = asyncio.Event()
        running = asyncio.create_task(_load_until(chaos.server.base_url, chaos.api_key, stop))

        def records() -> int:  # the load's progress, as the database sees it
            return chaos.query("SELECT COUNT(*) FROM accounting_usagerecord WHERE id > %s", (since,))[0][0]

        async def grow(by: int) -> int:
            start, deadline = records(), time.monotonic() + 30
            while records() < start + by and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return records()

        phases["before_stop"] = await grow(20)
        stop_process(chaos.redis_process)
        phases["redis_stopped_at"] = records()
        phases["during_outage"] = await grow(40) - phases["redis_stopped_at"]
        # A healthy breaker is let through without asking Redis for GATEWAY_BREAKER_CLEAN_SECONDS:
        # the outage lasts until the workers have found Redis gone, however fast the 40 came.
        await _logged(chaos, "kept in process until it answers")
        chaos.redis_process = redis_start(chaos.redis_port)
        phases["redis_back_at"] = records()
        phases["after_restart"] = await grow(40) - phases["redis_back_at"]
        # A worker tries Redis again a second after its last failure (RedisFallback.retry_after):
        # the load goes on until the workers have found it back, however fast the 40 records came.
        await _logged(chaos, "back in Redis")
        stop.set()
        return await running

    figures = asyncio.run(scenario())
    summary = figures.summary()
    print("\nredis outage:", json.dumps(summary), json.dumps(phases))
    failures = [o for o in figures.outcomes if o.kind != "answered"]
    assert not failures, failures[:5]  # every request answered, before, during and after the outage
    assert phases["during_outage"] >= 40 and phases["after_restart"] >= 40
    # Each worker noticed (its rate limits, breakers and health went in process) and came back.
    log = chaos.server.log()
    for what in KEPT_IN_PROCESS:
        assert f"{what} kept in process until it answers" in log and f"{what} back in Redis" in log, what
    # Back in Redis: the rate limits' buckets (and breakers, health) are written there again.
    keys = wait_for(lambda: _redis_keys(chaos), what="the gateway's state back in Redis", timeout=10)
    print("keys back in redis:", sorted({k.split(':')[2] for k in keys}))
    print("records:", records_check(chaos, figures, since_id=since), "money:", money_settled(chaos))


# --- PostgreSQL unreachable ---------------------------------------------------------------------------------
def test_postgres_unreachable_gives_clear_503s_and_recovers(chaos):
    since = last_record_id(chaos)
    warm = asyncio.run(load(chaos.server.base_url, chaos.api_key, [{"model": "steady", "stream": False}] * 4))
    assert warm.count("answered") == 4
    fresh_key = manage(chaos.env, "create_api_key", "acme", "--name", "fresh").strip().splitlines()[-1]
    manage(chaos.env, "createsuperuser", "--noinput", "--username", "ops-chaos", "--email", "ops@example.com")
    staff_token = manage(chaos.env, "create_staff_token", "ops-chaos", "--name", "chaos").strip().splitlines()[-1]
    jobs = [{"model": m, "stream": s} for m in ("steady", "chaotic") for s in (False, True)] * 3
    reads: dict[str, httpx.Response] = {}
    operator: dict[str, httpx.Response] = {}

    async def scenario():
        # Two slow streams are under way when the database goes: they are answered, and their
        # records wait for it to come back.
        headers = {"Authorization": f"Bearer {chaos.api_key}", **HTTPS}
        async with httpx.AsyncClient(base_url=chaos.server.base_url, headers=headers, timeout=30) as client:
            ws_url = chaos.server.base_url.replace("http://", "ws://") + "/v1/ws/chat"
            socket = await ws_connect(ws_url, additional_headers={"Authorization": f"Bearer {chaos.api_key}", **HTTPS})
            assert json.loads(await socket.recv())["type"] == "auth.ok"
            started = [asyncio.Event(), asyncio.Event()]
            in_flight = [asyncio.create_task(_slow_stream(client, event)) for event in started]
            for event in started:
                await asyncio.wait_for(event.wait(), 20)
            chaos.proxy.cut()
            began = time.monotonic()
            cut = await load(chaos.server.base_url, chaos.api_key, jobs, concurrency=4)
            seconds = time.monotonic() - began
            anthropic = await client.post("/v1/messages", json={
                "model": "steady", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}],
            }, headers={"x-api-key": chaos.api_key, "anthropic-version": "2023-06-01"})
            await socket.send(json.dumps({
                "type": "chat.request", "id": "during-cut", "model": "steady",
                "messages": [{"role": "user", "content": "hi"}],
            }))
            ws_error = json.loads(await asyncio.wait_for(socket.recv(), 20))
            await socket.close()
            # A socket whose key is not in the auth cache cannot authenticate: told so, closed 4503.
            fresh = await ws_connect(ws_url, additional_headers={"Authorization": f"Bearer {fresh_key}", **HTTPS})
            ws_auth = (json.loads(await asyncio.wait_for(fresh.recv(), 20)), None)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(fresh.recv(), 20)
            ws_auth = (ws_auth[0], fresh.close_code)
            for path in ("/v1/models", "/v1/usage", "/v1/cache/stats"):  # the tenant API's reads
                reads[path] = await client.get(path)
            # The operator API, whose token is looked up in the database: a 503, not a 500.
            operator["api"] = await client.get("/v1/tenants", headers={"Authorization": f"Bearer {staff_token}"})
            return cut, seconds, anthropic, (ws_error, ws_auth), await asyncio.gather(*in_flight)

    try:
        cut, cut_seconds, anthropic, (ws_error, ws_auth), streamed = asyncio.run(scenario())
        time.sleep(1)  # the outage lasts past the streams' end: their first record writes fail
    finally:
        chaos.proxy.restore()
    print("\npostgres cut:", json.dumps(cut.summary()), f"in {cut_seconds:.1f}s;",
          "streams in flight:", [o.kind for o in streamed])
    assert [o.kind for o in streamed] == ["answered", "answered"]
    assert all(o.kind == "clear_error" and o.status == 503 and o.detail == "database_unavailable"
               for o in cut.outcomes), cut.outcomes[:5]
    assert cut_seconds < 30
    # The Anthropic-compatible API says the same in Anthropic's error shape.
    assert anthropic.status_code == 503 and anthropic.json()["type"] == "error", anthropic.text
    # And the WebSocket API: an error event for the request, in the HTTP API's terms.
    assert ws_error["type"] == "error" and ws_error["id"] == "during-cut" and ws_error["status"] == 503, ws_error
    assert ws_error["error"]["code"] == "database_unavailable"
    assert ws_auth[0]["type"] == "error" and ws_auth[0]["error"]["code"] == "database_unavailable", ws_auth
    assert ws_auth[1] == 4503
    # Reads answer from what is cached in process, or say the database is unavailable.
    print("tenant API reads while cut:", {path: r.status_code for path, r in reads.items()})
    for path, read in reads.items():
        assert read.status_code == 200 or (
            read.status_code == 503 and read.json()["error"]["code"] == "database_unavailable"
        ), (path, read.status_code, read.text[:300])
    api = operator["api"]
    assert api.status_code == 503 and api.json()["error"]["code"] == "database_unavailable", api.text[:300]
    assert api.headers["retry-after"] == "1"
    # Recovery: within a bound, a whole batch is answered again. Until then (a connection pool
    # reconnecting, or handing out a connection the cut broke) a request may still get a clear 503.
    started, recovery = time.monotonic(), Figures()

    def batch_answered():
        batch = asyncio.run(load(chaos.server.base_url, chaos.api_key, jobs, concurrency=4))
        recovery.outcomes += batch.outcomes
        return batch.count("answered") == len(jobs)

    wait_for(batch_answered, what="a whole batch answered after the restore", timeout=40)
    print("after restore:", json.dumps(recovery.summary()), f"recovered in {time.monotonic() - started:.1f}s")
    assert all(o.kind == "answered" or o.detail == "database_unavailable" for o in recovery.outcomes)
    # The streams answered during the outage get their one record once the database is back.
    for outcome in streamed:
        wait_for(lambda: chaos.query(
            "SELECT 1 FROM accounting_usagerecord WHERE response_id = %s", (outcome.response_id,)
        ), what="the record of a stream answered during the outage", timeout=20)
    # No half-written state: the refused requests left no record and held no money.
    rows = chaos.query("SELECT response_id, status FROM accounting_usagerecord WHERE id > %s", (since,))
    assert Counter(status for _, status in rows)["success"] == len(rows) == 4 + 2 + recovery.count("answered")
    assert all(Counter(r for r, _ in rows)[o.response_id] == 1 for o in streamed)
    print("money:", money_settled(chaos))


def test_records_of_a_worker_killed_during_a_postgres_outage_are_written_by_the_next(chaos):
    """Streams answered while PostgreSQL is cut keep their records in their worker's journal
    (routing/journal.py); the workers are killed before it comes back, and the workers that
    replace them write those records, once each, with their settlements."""
    journal = Path(chaos.env["GATEWAY_VAR_DIR"]) / "journal"

    def kept() -> int:
        return sum(len(path.read_bytes().splitlines()) for path in journal.glob("records-*.jsonl"))

    async def streams_answered_during_the_cut() -> list[Outcome]:
        headers = {"Authorization": f"Bearer {chaos.api_key}", **HTTPS}
        async with httpx.AsyncClient(base_url=chaos.server.base_url, headers=headers, timeout=30) as client:
            started = [asyncio.Event(), asyncio.Event()]
            in_flight = [asyncio.create_task(_slow_stream(client, event)) for event in started]
            for event in started:
                await asyncio.wait_for(event.wait(), 20)
            chaos.proxy.cut()
            return await asyncio.gather(*in_flight)

    killed = chaos.server.workers()
    try:
        streamed = asyncio.run(streams_answered_during_the_cut())
        assert [o.kind for o in streamed] == ["answered", "answered"]
        wait_for(lambda: kept() == 2, what="both records kept in the journal (their first writes failed)")
        for pid in killed:
            os.kill(pid, signal.SIGKILL)  # their records' retries die with them
        wait_for(lambda: len(w := chaos.server.workers()) == 2 and not set(w) & set(killed),
                 what="the replacement workers")
    finally:
        chaos.proxy.restore()
    for outcome in streamed:
        wait_for(lambda: chaos.query(
            "SELECT 1 FROM accounting_usagerecord WHERE response_id = %s", (outcome.response_id,)
        ), what="the record of a stream answered before its worker was killed", timeout=40)
    for outcome in streamed:
        assert chaos.query(
            "SELECT status, stream FROM accounting_usagerecord WHERE response_id = %s", (outcome.response_id,)
        ) == [("success", True)]
    wait_for(lambda: not list(journal.glob("records-*.jsonl")), what="the replayed journals removed")
    print("\nkilled workers", killed, "during the cut; records written by their successors; money:",
          money_settled(chaos))


async def _slow_stream(client: httpx.AsyncClient, started: asyncio.Event) -> Outcome:
    body = {
        "model": "steady", "stream": True,
        "messages": [{"role": "user", "content": f"[[fake chunks=12 chunk_delay_ms=100]] {uuid.uuid4().hex}"}],
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                started.set()
                break
        rest = [line async for line in lines if line.startswith("data: ")]
    first = json.loads(line[6:])
    complete = rest and rest[-1] == "data: [DONE]" and not any('"error"' in event for event in rest)
    return Outcome("answered" if complete else "clear_error", 200, response_id=first["id"])


# --- a gateway worker killed mid-stream -----------------------------------------------------------------------
def _worker_holding(server: Server, client_port: int) -> int:
    """The pid of the `serve` worker holding the connection from `client_port`."""
    for pid in server.workers():
        if _holds_connection(pid, client_port):
            return pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def test_gateway_worker_killed_mid_stream_counts_nothing_twice(chaos):
    since = last_record_id(chaos)
    workers_before = chaos.server.workers()
    assert len(workers_before) == 2
    body = {
        "model": "steady", "stream": True,
        "messages": [{"role": "user", "content": f"[[fake chunks=40 chunk_delay_ms=200]] {uuid.uuid4().hex}"}],
    }
    headers = {"Authorization": f"Bearer {chaos.api_key}", **HTTPS}
    received, killed = [], None
    with httpx.Client(base_url=chaos.server.base_url, headers=headers, timeout=30) as client:
        with pytest.raises(httpx.TransportError):
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        received.append(json.loads(line[6:]))
                    if len(received) == 3 and killed is None:
                        killed = _worker_holding(chaos.server, client_port)
                        os.kill(killed, signal.SIGKILL)
    response_id = received[0]["id"]
    assert all("error" not in chunk for chunk in received) and len(received) < 40
    # The supervisor replaces the worker; the deployment answers again.
    wait_for(lambda: len(w := chaos.server.workers()) == 2 and killed not in w, what="a replacement worker")
    after = asyncio.run(load(chaos.server.base_url, chaos.api_key, [{"model": "steady", "stream": True}] * 6))
    assert after.count("answered") == 6
    # At most one record for the killed request (none: the worker died before writing it).
    killed_records = chaos.query("SELECT COUNT(*) FROM accounting_usagerecord WHERE response_id = %s", (response_id,))[0][0]
    assert killed_records <= 1
    assert len(chaos.query("SELECT id FROM accounting_usagerecord WHERE id > %s", (since,))) == 6 + killed_records
    # Its reservation outlived the worker; the periodic task frees it, and spend equals the records.
    # The replacement's budget lease, if the 6 requests made it take one, goes a second later.
    wait_for(lambda: chaos.money()["held"] <= 1 - killed_records, what="only the killed request's reservation held")
    held = chaos.money()["held"]
    released = manage(
        chaos.env, "shell", "-c",
        "from datetime import timedelta; from accounting.budgets import reservations_release_stale; "
        "print(reservations_release_stale(older_than=timedelta(0)))",
    ).strip().splitlines()[-1]
    print(f"\nkilled worker {killed} after {len(received)} chunks; records of that request: {killed_records}; "
          f"reservations held: {held}, released: {released}")
    assert int(released) == held == 1 - killed_records
    print("money:", money_settled(chaos))


# --- the Celery worker killed in the middle of a rollup ----------------------------------------------------------
class CeleryWorker:
    def __init__(self, chaos: Chaos, log_path: Path, queue: str):
        with open(log_path, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "gateway_site", "worker", "--pool=solo",
                 "--concurrency=1", "-Q", queue, "--hostname", f"{queue}@%h", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "--loglevel=INFO"],
                cwd=ROOT, env=chaos.env, stdout=log, stderr=subprocess.STDOUT,
            )


ROLLUP_COLUMNS = (
    "granularity, bucket_start, tenant_id, dimension, value, requests, errors, errors_by_class::text, "
    "prompt_tokens, completion_tokens, cost_usd, cache_hits, saved_cost_usd, latency_p50_ms, latency_p95_ms"
)


def test_celery_worker_killed_mid_rollup_then_next_run_equals_an_undisturbed_one(chaos, tmp_path):
    from celery import Celery

    from accounting.rollups import Granularity

    # Records to roll up: these, and whatever the scenarios above left.
    warm = asyncio.run(load(chaos.server.base_url, chaos.api_key, [{"model": "steady", "stream": False}] * 6))
    assert warm.count("answered") == 6
    queue = f"chaos-rollups-{uuid.uuid4().hex[:8]}"
    broker = chaos.env["CELERY_BROKER_URL"]
    app = Celery("chaos-client", broker=broker)
    (max_id,), = chaos.query("SELECT MAX(id) FROM accounting_usagerecord")

    def run_to_completion() -> list[tuple]:
        worker = CeleryWorker(chaos, tmp_path / "worker.log", queue)
        try:
            app.send_task("accounting.tasks.rollup_recent_task", queue=queue)
            wait_for(lambda: chaos.query(
                "SELECT 1 FROM accounting_rollupcursor WHERE last_record_id >= %s", (max_id,)
            ), what="the rollup run to commit", timeout=40)
        finally:
            stop_process(worker.process)
        return chaos.query(f"SELECT {ROLLUP_COLUMNS} FROM accounting_usagerollup ORDER BY 1, 2, 3, 4, 5")

    # A row of today's day bucket inserted and not committed by another transaction: the run's
    # insert of that row waits for it, inside the run's transaction, after it read the records.
    today = datetime.now(dt_timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    (tenant_id,), = chaos.query("SELECT tenant_id FROM accounting_usagerecord ORDER BY id DESC LIMIT 1")
    worker = CeleryWorker(chaos, tmp_path / "worker.log", queue)
    try:
        with psycopg.connect(chaos.database_url) as blocker:
            blocker.execute(
                "INSERT INTO accounting_usagerollup (granularity, bucket_start, tenant_id, dimension, value,"
                " requests, errors, errors_by_class, prompt_tokens, completion_tokens, cost_usd, cache_hits,"
                " saved_cost_usd, latency_sketch, ttft_sketch, computed_at)"
                " VALUES (%s, %s, %s, 'total', '', 0, 0, '{}', 0, 0, 0, 0, 0, '{}', '{}', now())",
                (Granularity.DAY, today, tenant_id),
            )
            app.send_task("accounting.tasks.rollup_recent_task", queue=queue)
            (backend,), = wait_for(lambda: chaos.query(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'transactionid' "
                "AND datname = current_database() AND pid <> %s", (blocker.info.backend_pid,)
            ), what="the rollup to block mid-run", timeout=40)
            written = chaos.query(
                "SELECT 1 FROM pg_locks WHERE pid = %s AND relation = 'accounting_usagerollup'::regclass "
                "AND mode = 'RowExclusiveLock'", (backend,),
            )
            assert written, "the run had not written any rollup row before it blocked"
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(timeout=10)
            blocker.rollback()
        wait_for(lambda: not chaos.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)),
                 what="the killed run's transaction to end", timeout=20)
    finally:
        stop_process(worker.process)
    # Nothing of the killed run is left: no rollup row, the cursor not advanced.
    assert chaos.query("SELECT COUNT(*) FROM accounting_usagerollup")[0][0] == 0
    assert not chaos.query("SELECT 1 FROM accounting_rollupcursor WHERE last_record_id >= %s", (max_id,))
    after_kill = run_to_completion()
    chaos.query("DELETE FROM accounting_usagerollup RETURNING 1")
    chaos.query("DELETE FROM accounting_rollupcursor RETURNING 1")
    undisturbed = run_to_completion()
    app.close()
    print(f"\nrollup rows after the killed run and a rerun: {len(after_kill)}; undisturbed: {len(undisturbed)}")
    assert after_kill == undisturbed and after_kill
    totals = [row for row in undisturbed if row[0] == "day" and row[3] == "total"]
    assert sum(row[5] for row in totals) == chaos.query("SELECT COUNT(*) FROM accounting_usagerecord")[0][0]
