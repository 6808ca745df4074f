"""A real gateway for the hostile-input tests: one production worker (uvicorn) and the fake provider
as processes, on a database of their own, with a tenant key and a staff token
(tests/e2e/conftest.py's deployment, plus an operator). `rss_kib` reads the gateway process's resident memory, for the memory bounds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import stop_process
from tests.e2e.conftest import CONFIG, PROVIDER_SECRETS, database_create, database_drop, deployment_env, fake_start, \
    gateway_start, manage

# Small enough that a body a few times over the limit is quick to send on a busy 2-core machine.
MAX_BODY_BYTES = 512 * 1024  # under the server's own WebSocket message limit (1 MiB)


@dataclass
class HostileStack:
    base_url: str
    api_key: str
    staff_token: str
    database_url: str
    pid: int
    log_path: Path

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/ws/chat"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def alive(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False


@pytest.fixture(scope="module")
def hostile_stack(tmp_path_factory):
    database_url, name = database_create()
    env = deployment_env(database_url, name, E2E_FAKE_PROVIDER_KEY=PROVIDER_SECRETS[0],
                         LOG_LEVEL="WARNING", GATEWAY_MAX_BODY_BYTES=str(MAX_BODY_BYTES))
    fake, fake_port = fake_start(env)
    processes = [fake]
    try:
        manage(env, "migrate", "--noinput")
        config = tmp_path_factory.mktemp("hostile") / "gateway.yaml"
        config.write_text(CONFIG.format(fake_port=fake_port))
        manage(env, "import_config", str(config))
        api_key = manage(env, "create_api_key", "acme", "--name", "hostile").strip().splitlines()[-1]
        manage(env, "createsuperuser", "--noinput", "--username", "ops-fuzz", "--email", "ops@example.com")
        staff_token = manage(env, "create_staff_token", "ops-fuzz", "--name", "fuzz").strip().splitlines()[-1]
        log_path = tmp_path_factory.mktemp("logs") / "gateway.log"
        gateway, base_url = gateway_start(env, log_path)
        processes.append(gateway)
        yield HostileStack(base_url=base_url, api_key=api_key, staff_token=staff_token,
                           database_url=database_url, pid=gateway.pid,
                           log_path=log_path)
    finally:
        for process in processes:
            stop_process(process)
        database_drop(name)


def wait_for(condition, *, timeout: float = 10.0, interval: float = 0.05):
    """Poll `condition()` until it is truthy or the deadline passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
