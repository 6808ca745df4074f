"""Smoke test of the newcomer's path: `make run` on SQLite, then a streamed completion."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import openai
import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.e2e


def _read_until_key(process: subprocess.Popen, deadline: float) -> tuple[str, list[str]]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Demo API key (shown once):" in line:
            return line.split(":", 1)[1].strip(), lines
        if time.monotonic() > deadline:
            break
    raise AssertionError("make run printed no demo key:\n" + "".join(lines))


def test_make_run_serves_a_streamed_completion_on_sqlite(tmp_path):
    port, fake_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(PORT=str(port), FAKE_PROVIDER_PORT=str(fake_port), GATEWAY_VAR_DIR=str(tmp_path))
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        key, lines = _read_until_key(process, time.monotonic() + 120)
        assert any("Admin user: admin  password:" in line for line in lines)
        assert (tmp_path / "gateway.sqlite3").exists()
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the gateway did not come up"
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}],
                stream=True, stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.total_tokens > 0
        admin = httpx.get(f"http://127.0.0.1:{port}/admin/login/", timeout=5)
        assert admin.status_code == 200
        css = httpx.get(f"http://127.0.0.1:{port}/static/admin/css/base.css", timeout=5)
        assert css.status_code == 200 and "body" in css.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
