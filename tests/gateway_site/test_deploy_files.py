"""The deployment files (docs/deployment.md) checked with the tools that read them, offline:
systemd's own verifier for the units, docker-compose's validator for the compose file (image
pulls need the internet), and the Procfile's web line run as a platform runs it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port, stop_process
from tests.e2e.test_deployment import production_env

DEPLOY = ROOT / "deploy"
COMPOSE_ENV = {
    "DJANGO_SECRET_KEY": "k" * 50, "GATEWAY_ENCRYPTION_KEY": "fernet", "ALLOWED_HOSTS": "gw.example.com",
    "POSTGRES_PASSWORD": "pw",
}


def _units_for_this_machine(tmp_path: Path) -> Path:
    """The units with their install paths pointed at this checkout, so the verifier can check
    that every command exists."""
    for unit in [*DEPLOY.glob("systemd/*.service"), *DEPLOY.glob("systemd/*.target")]:
        text = unit.read_text().replace("/opt/llm-gateway", str(ROOT))
        text = text.replace("/etc/llm-gateway/env", str(tmp_path / "env"))
        (tmp_path / unit.name).write_text(text)
    shutil.copy(DEPLOY / "systemd/llm-gateway.env.example", tmp_path / "env")
    return tmp_path


def test_systemd_units_verify(tmp_path):
    units = _units_for_this_machine(tmp_path)
    names = sorted(path.name for path in units.iterdir() if path.suffix in (".service", ".target"))
    assert names == [
        "gateway-beat.service", "gateway-migrate.service", "gateway-web.service",
        "gateway-worker.service", "llm-gateway.target",
    ]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names], cwd=units, capture_output=True, text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_web_unit_stops_gracefully_and_waits_long_enough():
    unit = (DEPLOY / "systemd/gateway-web.service").read_text()
    assert "manage.py serve" in unit and "KillMode=mixed" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    env = (DEPLOY / "systemd/llm-gateway.env.example").read_text()
    grace = float(re.search(r"^GATEWAY_SHUTDOWN_GRACE_SECONDS=(\S+)", env, re.M).group(1))
    stop = float(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1))
    assert stop > grace + 10  # the supervisor kills a worker at grace + 10


def test_compose_file_is_valid_and_has_the_whole_stack():
    compose = ["docker-compose", "-f", str(DEPLOY / "docker-compose.yml")]
    env = {**os.environ, **COMPOSE_ENV}
    result = subprocess.run([*compose, "config", "-q"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    services = subprocess.run([*compose, "config", "--services"], env=env, capture_output=True, text=True)
    assert set(services.stdout.split()) == {"postgres", "redis", "migrate", "web", "worker", "beat"}
    config = subprocess.run([*compose, "config"], env=env, capture_output=True, text=True).stdout
    assert "manage.py" in config and "serve" in config and "GATEWAY_ENV: production" in config
    missing = subprocess.run(
        [*compose, "config", "-q"], capture_output=True, text=True,
        env={key: value for key, value in env.items() if key != "DJANGO_SECRET_KEY"},
    )
    assert missing.returncode != 0 and "set DJANGO_SECRET_KEY" in missing.stderr


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line and not line.startswith("#"))


def test_procfile_has_the_process_types():
    processes = _procfile()
    assert set(processes) == {"release", "web", "worker", "beat"}
    assert "migrate" in processes["release"]
    assert processes["worker"].startswith("celery -A gateway_site worker")
    assert processes["beat"].startswith("celery -A gateway_site beat")


def test_procfile_web_line_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = production_env(
        DATABASE_URL=os.environ["DATABASE_URL"], REDIS_URL=os.environ["REDIS_URL"], PORT=str(port),
        GATEWAY_STATIC_ROOT=str(tmp_path / "static"),
        PATH=f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
    )
    process = subprocess.Popen(
        ["bash", "-c", f"exec {_procfile()['web']}"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert (tmp_path / "static/staticfiles.json").exists()  # collected at start
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        stop_process(process)


def test_dockerfile_collectstatic_step_runs_with_its_placeholders(tmp_path):
    """The image collects static files at build time with placeholder production values: they
    must satisfy the production settings."""
    dockerfile = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    step = next(line for line in dockerfile.splitlines() if "collectstatic" in line and line.startswith("RUN"))
    assignments = dict(re.findall(r"\b([A-Z_]+)=(\S+)", step.split("&&", 1)[1]))
    assert assignments["GATEWAY_ENV"] == "production"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "DJANGO_"))}
    env.update(assignments, GATEWAY_STATIC_ROOT=str(tmp_path / "static"), DJANGO_SETTINGS_MODULE="gateway_site.settings")
    result = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "manage.py", "collectstatic", "--noinput"], cwd=ROOT, env=env,
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "static/staticfiles.json").exists()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "var", "tests"} <= set(ignored)
