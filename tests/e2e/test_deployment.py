"""The production deployment, as docs/deployment.md runs it: production settings, `manage.py
serve` (N uvicorn workers on one socket: real processes on real ports) against PostgreSQL and
Redis, and graceful shutdown on SIGTERM with every request recorded."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet
from openai import OpenAI
from websockets.asyncio.client import connect

from tests.conftest import ROOT, free_port, stop_process
from tests.e2e.conftest import CONFIG, database_create, database_drop, fake_start, manage

pytestmark = pytest.mark.e2e

# Behind the documented reverse proxy every request arrives with this header; without it the
# production settings redirect to HTTPS.
HTTPS = {"X-Forwarded-Proto": "https"}
USAGE_SQL = (
    "SELECT status, error_class, http_status, completion_tokens FROM accounting_usagerecord "
    "WHERE response_id = %s"
)


def production_env(**extra: str) -> dict:
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("GATEWAY_", "DJANGO_")) and key not in ("DEBUG", "ALLOWED_HOSTS")
    }
    env.update(
        GATEWAY_ENV="production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        GATEWAY_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SETTINGS_MODULE="gateway_site.settings",
    )
    env.update(extra)
    return env


@dataclass
class Deployment:
    env: dict
    api_key: str
    database_url: str
    static_root: Path

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def wait_for_rows(self, sql: str, params: tuple, count: int = 1, timeout: float = 10.0) -> list[tuple]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query(sql, params)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def deployment_env(database_url: str, name: str, tmp: Path, **extra: str) -> dict:
    """The production environment of a deployment on the test database `name`."""
    return production_env(
        DATABASE_URL=database_url,
        REDIS_URL=os.environ["REDIS_URL"],
        GATEWAY_REDIS_PREFIX=f"gwtest:{name}",
        GATEWAY_STATIC_ROOT=str(tmp / "static"),
        **extra,
    )


def deployment_configure(env: dict, config: str, tmp: Path, *, key_name: str) -> str:
    """Migrate, import `config` and create a key of tenant `acme`, as an operator does: the key."""
    manage(env, "migrate", "--noinput")
    path = tmp / "gateway.yaml"
    path.write_text(config)
    manage(env, "import_config", str(path))
    return manage(env, "create_api_key", "acme", "--name", key_name).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    database_url, name = database_create()
    tmp = tmp_path_factory.mktemp("deploy")
    env = deployment_env(database_url, name, tmp, E2E_FAKE_PROVIDER_KEY="sk-e2e-provider-secret-from-env-0041")
    fake, fake_port = fake_start(env)
    try:
        api_key = deployment_configure(env, CONFIG.format(fake_port=fake_port), tmp, key_name="deploy")
        manage(env, "collectstatic", "--noinput")
        yield Deployment(env=env, api_key=api_key, database_url=database_url, static_root=tmp / "static")
    finally:
        stop_process(fake)
        database_drop(name)


class Server:
    """`manage.py serve` as a process: its base URL, and the means to stop it."""

    def __init__(self, deployment: Deployment, log_path: Path, *args: str, **env: str):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{self.port}", *args],
                cwd=ROOT, env={**deployment.env, **env}, stdout=log, stderr=subprocess.STDOUT,
            )
        self._wait_until_serving()

    def _wait_until_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited during start-up:\n{self.log()}"
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"serve did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def terminate(self) -> float:
        self.process.send_signal(signal.SIGTERM)
        return time.monotonic()

    def refuses_connections(self, timeout: float = 10.0) -> bool:
        """Poll until a new connection is refused (every worker has closed the socket)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.base_url}/health", timeout=1)
            except httpx.ConnectError:
                return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def serve(deployment, tmp_path):
    servers = []

    def start(*args: str, **env: str) -> Server:
        server = Server(deployment, tmp_path / f"serve-{len(servers)}.log", *args, **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _prompt(directive: str) -> list[dict]:
    # A new prompt each time: no cache can answer it.
    return [{"role": "user", "content": f"{directive} shutdown test {uuid.uuid4().hex}"}]


def _openai(server: Server, deployment: Deployment) -> OpenAI:
    return OpenAI(
        base_url=f"{server.base_url}/v1", api_key=deployment.api_key, default_headers=HTTPS, max_retries=0
    )


# --- production settings ----------------------------------------------------------------------------


@pytest.mark.parametrize("deploy", [[], ["--deploy"]])
def test_check_deploy_passes_with_the_production_settings(deploy):
    """Django's security checks are on, none silenced: the production settings give what they ask."""
    env = production_env(DATABASE_URL="postgres://gateway@db/gateway", REDIS_URL="redis://redis:6379/0")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", *deploy, "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_production_refuses_to_start_without_its_secrets():
    env = production_env(DATABASE_URL="postgres://gateway@db/gateway")
    del env["DJANGO_SECRET_KEY"]
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "GATEWAY_ENV=production needs DJANGO_SECRET_KEY, REDIS_URL" in result.stderr


def test_static_files_are_served_by_a_production_worker(deployment, serve, tmp_path):
    static_root = tmp_path / "fresh-static"
    server = serve("--workers", "1", GATEWAY_STATIC_ROOT=str(static_root))  # serve runs collectstatic
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    with httpx.Client(base_url=server.base_url, headers=HTTPS) as client:
        css = client.get("/static/admin/css/base.css", headers={"Accept-Encoding": "gzip"})
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert css.headers["content-encoding"] == "gzip" and "body" in css.text
        hashed = client.get(f"/static/{manifest['routing/playground.js']}")
        assert hashed.status_code == 200 and "immutable" in hashed.headers["cache-control"]
        assert hashed.content == (ROOT / "routing/static/routing/playground.js").read_bytes()
        assert client.get("/static/routing/playground.js").status_code == 200
        assert client.get("/static/nothing-here.js").status_code == 404
        login = client.get("/admin/login/")
        assert login.status_code == 200 and manifest["admin/css/base.css"] in login.text
        assert "max-age=31536000" in login.headers["strict-transport-security"]
    plain = httpx.get(f"{server.base_url}/admin/login/")  # no proxy header: to HTTPS
    assert plain.status_code == 301 and plain.headers["location"].startswith("https://")


# --- the server command ------------------------------------------------------------------------------


def test_serve_restarts_a_worker_that_dies(deployment, serve):
    server = serve("--workers", "2")
    workers = server.workers()
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = server.workers()
        if len(current) == 2 and workers[0] not in current:
            break
        time.sleep(0.1)
    assert len(current) == 2 and workers[0] not in current and workers[1] in current
    client = _openai(server, deployment)
    for _ in range(4):
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=_prompt(""))
        assert answer.choices[0].message.content


def test_sighup_replaces_the_workers_without_refusing_a_request(deployment, serve):
    server = serve("--workers", "2", "--grace", "10")
    old = set(server.workers())
    stream = _openai(server, deployment).chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=_prompt("[[fake chunks=80 chunk_delay_ms=100]]")
    )
    chunks = [next(stream)]
    server.process.send_signal(signal.SIGHUP)
    statuses = []
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=server.base_url) as client:
        while time.monotonic() < deadline:
            statuses.append(client.get("/health", headers={"Connection": "close"}).status_code)
            current = set(server.workers())
            if len(current) == 2 and not current & old:
                break
    assert len(current) == 2 and not current & old, (old, current)
    assert set(statuses) == {200}
    chunks.extend(stream)  # the old worker finished its stream before it left
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert deployment.wait_for_rows(USAGE_SQL, (chunks[0].id,)) == [("success", "", 200, 80)]


def test_a_reload_whose_new_worker_dies_keeps_the_old_workers(deployment, serve):
    server = serve("--workers", "1", "--grace", "10")
    [old] = server.workers()
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(server.workers()) < 2:
        time.sleep(0.05)
    [new] = set(server.workers()) - {old}
    os.kill(new, signal.SIGKILL)  # as if the new code failed at start-up
    while time.monotonic() < deadline and "reload failed" not in server.log():
        time.sleep(0.05)
    assert "reload failed" in server.log()
    assert server.workers() == [old]
    answer = _openai(server, deployment).chat.completions.create(model="gpt-4o-mini", messages=_prompt(""))
    assert answer.choices[0].message.content
    assert server.workers() == [old]  # not drained, not replaced


# --- graceful shutdown --------------------------------------------------------------------------------


LEASING_SQL = (
    "SELECT p.spent_usd, p.reserved_usd,"
    " (SELECT COUNT(*) FROM accounting_budgetreservation r WHERE r.budget_period_id = p.id),"
    " (SELECT COUNT(*) FROM accounting_usagerecord u WHERE u.tenant_id = b.tenant_id),"
    " (SELECT COALESCE(SUM(u.cost_usd), 0) FROM accounting_usagerecord u WHERE u.tenant_id = b.tenant_id)"
    " FROM accounting_budgetperiod p JOIN accounting_budget b ON b.id = p.budget_id"
    " JOIN accounting_tenant t ON t.id = b.tenant_id WHERE t.slug = 'leasing'"
)


def test_a_drained_worker_leaves_no_reservation_behind(deployment, serve, tmp_path):
    """docs/accounting.md, budgets: every request on a hard budget reserves and its record settles
    the reservation; after a worker's SIGTERM drain the period's spend is its records' cost, with
    nothing left reserved and no reservation row, however many requests were in flight."""
    config = tmp_path / "leasing.yaml"
    config.write_text("tenants:\n  - slug: leasing\n    budget: {amount_usd: 1000, period: monthly, hard: true}\n")
    manage(deployment.env, "import_config", str(config))
    key = manage(deployment.env, "create_api_key", "leasing", "--name", "lease").strip().splitlines()[-1]
    server = serve("--workers", "1")
    headers = {**HTTPS, "authorization": f"Bearer {key}"}

    async def ask(client: httpx.AsyncClient) -> int:
        response = await client.post("/chat/completions", json={
            "model": "gpt-4o-mini", "messages": _prompt("drain"), "max_tokens": 16})
        assert response.status_code == 200, response.text
        return 1

    async def busy() -> int:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/v1", timeout=30, headers=headers) as client:
            return sum(await asyncio.gather(*(ask(client) for _ in range(40))))

    answered = asyncio.run(busy())
    server.terminate()
    assert server.process.wait(timeout=20) == 0

    spent, reserved, rows, records, cost = deployment.query(LEASING_SQL)[0]
    assert (reserved, rows, records) == (0, 0, answered)
    assert spent == cost > 0


def assert_nothing_was_cut(log: str) -> None:
    """No request or task was cut at exit, in the words of uvicorn and of graceful.py."""
    assert "task still running at exit" not in log
    assert "timeout graceful shutdown exceeded" not in log and "drained in" in log


def test_sigterm_during_a_stream_lets_it_finish_and_records_it(deployment, serve):
    server = serve("--workers", "2", "--grace", "15")
    client = _openai(server, deployment)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=_prompt("[[fake chunks=30 chunk_delay_ms=100]]")
    )
    chunks = [next(stream)]
    sent = server.terminate()
    assert server.refuses_connections(), "a new connection was still accepted after SIGTERM"
    chunks.extend(stream)  # the stream goes on to its end
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 30 and chunks[-1].choices[0].finish_reason == "stop"
    assert server.process.wait(timeout=15) == 0
    assert time.monotonic() - sent < 15
    rows = deployment.wait_for_rows(USAGE_SQL, (chunks[0].id,))
    assert rows == [("success", "", 200, 30)]
    assert_nothing_was_cut(server.log())


def _holds_connection(pid: int, client_port: int) -> bool:
    """Whether process `pid` has accepted the TCP connection whose client end is `client_port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == client_port:  # rem_address
                inodes.add(f"socket:[{fields[9]}]")
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def test_a_connection_accepted_before_sigterm_gets_its_first_request_served(deployment, serve):
    """The race a SIGHUP reload under traffic hits: the worker accepts a connection, then starts
    draining before the client's request reaches it. That request is served (and told to close
    the connection), not refused; a second request on a kept-alive connection still is."""
    server = serve("--workers", "1", "--grace", "15")
    [worker] = server.workers()
    stream = _openai(server, deployment).chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=_prompt("[[fake chunks=40 chunk_delay_ms=100]]")
    )
    chunks = [next(stream)]  # keeps the worker draining for a few seconds
    kept_alive = httpx.Client(base_url=server.base_url)
    assert kept_alive.get("/health").status_code == 200
    fresh = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    deadline = time.monotonic() + 10
    while not _holds_connection(worker, fresh.getsockname()[1]):
        assert time.monotonic() < deadline, "the worker did not accept the connection"
        time.sleep(0.01)
    server.terminate()
    assert server.refuses_connections(), "a new connection was still accepted after SIGTERM"

    fresh.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += fresh.recv(4096)
    head = answer.split(b"\r\n\r\n", 1)[0].decode().lower().split("\r\n")
    assert head[0].startswith("http/1.1 200"), head
    assert "connection: close" in head
    refused = kept_alive.get("/health")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
    chunks.extend(stream)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert server.process.wait(timeout=20) == 0
    fresh.close()
    kept_alive.close()
    assert_nothing_was_cut(server.log())


def test_past_the_deadline_streams_and_requests_end_cleanly_and_are_recorded(deployment, serve):
    server = serve("--workers", "1", "--grace", "2")
    (since,), = deployment.query("SELECT now()", ())  # the module's database is shared by both servers' runs
    kept_alive = httpx.Client(base_url=server.base_url, headers=HTTPS)
    assert kept_alive.get("/health").status_code == 200  # a connection that stays open
    slow = {}

    def slow_answer() -> None:  # a non-streamed request still waiting for its provider
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions", timeout=30,
            headers={**HTTPS, "Authorization": f"Bearer {deployment.api_key}"},
            json={"model": "gpt-4o-mini", "messages": _prompt("[[fake delay_ms=20000]]")},
        )
        slow["response"] = response

    thread = threading.Thread(target=slow_answer)
    thread.start()
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", timeout=30,
        headers={**HTTPS, "Authorization": f"Bearer {deployment.api_key}"},
        json={"model": "gpt-4o-mini", "stream": True,
              "messages": _prompt("[[fake chunks=200 chunk_delay_ms=100]]")},
    ) as response:
        lines = response.iter_lines()
        events = [next(line for line in lines if line.startswith("data: "))]
        sent = server.terminate()
        assert server.refuses_connections(), "a new connection was still accepted after SIGTERM"
        refused = kept_alive.get("/v1/models", headers={"Authorization": f"Bearer {deployment.api_key}"})
        events.extend(line for line in lines if line.startswith("data: "))  # ends without a transport error
    thread.join(timeout=30)
    assert server.process.wait(timeout=15) == 0
    elapsed = time.monotonic() - sent
    assert 2 <= elapsed < 2 + 5, elapsed

    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["error"]["code"] == "server_shutting_down"
    chunks = [json.loads(event[6:]) for event in events[:-2]]
    streamed = sum(1 for c in chunks for choice in c["choices"] if choice["delta"].get("content"))
    assert 5 < streamed < 200
    rows = deployment.wait_for_rows(USAGE_SQL, (chunks[0]["id"],))
    assert rows == [("cancelled", "server_shutdown", 200, streamed)]

    assert slow["response"].status_code == 503
    assert slow["response"].json()["error"]["code"] == "server_shutting_down"
    rows = deployment.wait_for_rows(
        "SELECT status, error_class, http_status, stream FROM accounting_usagerecord "
        "WHERE http_status = 503 AND error_class = 'server_shutdown' AND created_at >= %s", (since,),
    )
    assert rows == [("cancelled", "server_shutdown", 503, False)]
    kept_alive.close()


def test_sigterm_lets_a_websocket_request_finish_then_closes_the_socket(deployment, serve):
    server = serve("--workers", "1", "--grace", "15")
    url = server.base_url.replace("http://", "ws://") + "/v1/ws/chat"

    async def run():
        headers = {"Authorization": f"Bearer {deployment.api_key}"}
        async with connect(url, additional_headers=headers) as socket:
            assert json.loads(await socket.recv())["type"] == "auth.ok"
            await socket.send(json.dumps({
                "type": "chat.request", "id": "a", "model": "gpt-4o-mini",
                "messages": _prompt("[[fake chunks=20 chunk_delay_ms=100]]"),
            }))
            events = [json.loads(await asyncio.wait_for(socket.recv(), timeout=10))]
            server.terminate()
            while events[-1]["type"] != "chat.done":
                events.append(json.loads(await asyncio.wait_for(socket.recv(), timeout=10)))
            await asyncio.wait_for(socket.wait_closed(), timeout=10)
            return events, socket.close_code

    events, close_code = asyncio.run(run())
    deltas = [e for e in events if e["type"] == "chat.delta" and e["content"]]
    assert len(deltas) == 20 and close_code == 4503
    assert server.process.wait(timeout=15) == 0
    rows = deployment.wait_for_rows(USAGE_SQL, (events[-1]["response_id"],))
    assert rows == [("success", "", 200, 20)]
