"""Smoke test of the newcomer's path: `make run` on SQLite, then a streamed completion.

What a newcomer reads on the terminal is checked too: the `export KEY=...` line, the URLs of every
page, short plain log lines (no JSON), no warning from the first `make run` to its stop, and
standard reason phrases on the status lines ("429 Too Many Requests", not "429 Unknown Status")."""

from __future__ import annotations

import http.client
import json
import os
import re
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


def _read_until(process: subprocess.Popen, marker: str, deadline: float) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            return lines
    raise AssertionError(f"make run printed no {marker!r}:\n" + "".join(lines))


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
        lines += _read_until(process, "With KEY exported", time.monotonic() + 60)
        assert f"  export KEY={key}\n" in lines
        base = f"http://127.0.0.1:{port}"
        printed = "".join(lines)
        for name, path in (("Admin (user admin)", "/admin/"), ("Dashboards", "/dashboard/"),
                           ("Request logs", "/dashboard/demo/requests/"), ("Playground", "/playground/"),
                           ("API docs", "/api/docs/"), ("Front door", "/"), ("API base URL", "/v1")):
            assert re.search(rf"^  {re.escape(name)}: +{re.escape(base + path)}$", printed, re.M), name
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
        front = httpx.get(f"{base}/", timeout=5)
        assert front.status_code == 200 and 'href="/accounts/login/?next=/"' in front.text
        # daphne's status line for a status Twisted has no phrase of: the fake answers 429 (twice).
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/chat/completions", body=json.dumps({
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi [[fake status=429]]"}],
        }), headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        refused = connection.getresponse()
        assert (refused.status, refused.reason) == (429, "Too Many Requests")
        connection.close()
        css = httpx.get(f"http://127.0.0.1:{port}/static/admin/css/base.css", timeout=5)
        assert css.status_code == 200 and "body" in css.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            rest, _ = process.communicate()
    output = "".join(lines) + rest
    assert not re.search(r"warn", output, re.I), output
    logged = [line for line in output.splitlines() if re.match(r"\d\d:\d\d:\d\d (INFO|ERROR) ", line)]
    assert any(" routing.record request chat.completions success " in line and "model=gpt-4o-mini" in line
               for line in logged), output
    assert not any(line.startswith("{") for line in output.splitlines()), "JSON log lines on the terminal"
