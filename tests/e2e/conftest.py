"""A real deployment for end-to-end tests: the fake provider and the gateway under uvicorn, as
processes, against a database of their own on the test PostgreSQL server, configured the way an
operator does it (migrate, import_config, create_tenant, create_api_key)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import ROOT, free_port, start_process, stop_process

CONFIG = """
providers:
  - name: fake
    type: openai
    api_base: http://127.0.0.1:{fake_port}/v1
    api_key: env:E2E_FAKE_PROVIDER_KEY
    models:
      - alias: gpt-4o-mini
        upstream: gpt-4o-mini
        input_price_per_million: 0.15
        output_price_per_million: 0.60
        context_window: 128000
      - alias: text-embedding-3-small  # no mode: the catalogue's, embedding (accounting.prices.mode_infer)
        input_price_per_million: 0.02
      - alias: gpt-3.5-turbo-instruct  # no mode: the catalogue's, completion (legacy text completions)
        input_price_per_million: 1.50
        output_price_per_million: 2.00
  - name: fake-anthropic
    type: anthropic
    api_base: http://127.0.0.1:{fake_port}
    api_key: sk-ant-e2e-literal-secret-0042
    models:
      - alias: claude-haiku-4-5
        input_price_per_million: 1.0
        output_price_per_million: 5.0
tenants:
  - slug: acme
    name: Acme Corp
"""
# The fake provider in three wire formats, one model each (OpenAI, Anthropic, Gemini), and a tenant
# `acme`: for tests that run the same requests through every format ({port}: the fake's).
WIRE_FORMATS_CONFIG = """
providers:
  - name: fake
    type: openai
    api_base: http://127.0.0.1:{port}/v1
    api_key: sk-e2e-openai-0001
    models:
      - alias: gpt-4o-mini
        input_price_per_million: 0.15
        output_price_per_million: 0.60
  - name: fake-anthropic
    type: anthropic
    api_base: http://127.0.0.1:{port}
    api_key: sk-ant-e2e-0002
    models:
      - alias: claude-haiku-4-5
        input_price_per_million: 1.0
        output_price_per_million: 5.0
  - name: fake-gemini
    type: gemini
    api_base: http://127.0.0.1:{port}
    api_key: AIza-e2e-gemini-0003
    models:
      - alias: gemini-flash
        upstream: gemini-2.5-flash
        input_price_per_million: 0.30
        output_price_per_million: 2.50
tenants:
  - slug: acme
    name: Acme Corp
"""
WIRE_FORMAT_MODELS = ("gpt-4o-mini", "claude-haiku-4-5", "gemini-flash")
PROVIDER_SECRETS = ("sk-e2e-provider-secret-from-env-0041", "sk-ant-e2e-literal-secret-0042")


@dataclass
class Stack:
    base_url: str
    api_key: str
    database_url: str
    log_path: Path

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def wait_for_rows(self, sql: str, params: tuple, count: int, timeout: float = 10.0) -> list[tuple]:
        """Poll until the query returns `count` rows; records are written as a stream ends."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query(sql, params)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def manage(env: dict, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, input=stdin,
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def _wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the gateway exited during start-up")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the gateway did not answer {url} within {timeout}s")


def database_create() -> tuple[str, str]:
    """A fresh database on the test server: (its URL, its name)."""
    admin_url = os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    name = f"gw_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}", name


def database_drop(name: str) -> None:
    admin_url = os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def gateway_start(env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    """The gateway as one production worker (`gateway_site/uvicorn_worker.py`, what `manage.py
    serve` starts) on a free port; returns (process, base URL)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    log = open(log_path, "w")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway_site.uvicorn_worker", "--fd", str(sock.fileno()),
             "gateway_site.asgi:application"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),),
        )
    finally:
        log.close()
        sock.close()  # the worker holds the socket now
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}/health", process)
    except RuntimeError:
        stop_process(process)
        raise
    return process, f"http://127.0.0.1:{port}"


def deployment_env(database_url: str, name: str, **extra: str) -> dict:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "DEBUG",
        "GATEWAY_REDIS_PREFIX": f"gwtest:{name}",
        **extra,
    }


def fake_start(env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = start_process(
        [sys.executable, "manage.py", "fake_provider", "--port", str(port)], ready="listening", env=env
    )
    return process, port


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    database_url, name = database_create()
    env = deployment_env(database_url, name, E2E_FAKE_PROVIDER_KEY=PROVIDER_SECRETS[0])
    fake, fake_port = fake_start(env)
    processes = [fake]
    try:
        manage(env, "migrate", "--noinput")
        config = tmp_path_factory.mktemp("e2e") / "gateway.yaml"
        config.write_text(CONFIG.format(fake_port=fake_port))
        manage(env, "import_config", str(config))
        api_key = manage(env, "create_api_key", "acme", "--name", "e2e").strip().splitlines()[-1]
        log_path = tmp_path_factory.mktemp("logs") / "gateway.log"
        gateway, base_url = gateway_start(env, log_path)
        processes.append(gateway)
        yield Stack(base_url=base_url, api_key=api_key, database_url=database_url, log_path=log_path)
    finally:
        for process in processes:
            stop_process(process)
        database_drop(name)


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


@pytest.fixture
def browser(request, tmp_path):
    """Headless Debian Chromium through chromedriver; a module sets `BROWSER_WINDOW = "W,H"`."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={getattr(request.module, 'BROWSER_WINDOW', '1400,1000')}")
    profile = tmp_path / "chromium-profile"
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition, *, what: str, timeout: float = 20.0):
    """Poll `condition` until it returns something truthy (returned); fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def redis_start(port: int) -> subprocess.Popen:
    """A private redis-server a test may stop and restart (never the machine's shared one)."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: _redis_answers(port), what=f"redis-server on {port} to answer")
    return process


def _redis_answers(port: int) -> bool:
    import redis

    try:
        return redis.Redis(port=port, socket_timeout=0.5).ping()
    except redis.exceptions.ConnectionError:
        return False
