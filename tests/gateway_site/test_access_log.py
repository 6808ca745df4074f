"""The servers' own access logs (`manage.py serve --access-log`) never hold a key sent in a query
string: uvicorn and daphne each write the request's path with its query, and a WebSocket's URL goes
to the server's log too. Real servers, real sockets; the logs are read once the server has stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import ROOT, free_port
from tests.e2e.conftest import _wait_until_serving

QUERY_SECRETS = ("sk-query-secret-0a1b2c3d", "AIzaQuerySecret4e5f6a7b", "plain-query-token-8c9d")


@pytest.mark.e2e
def test_query_string_credentials_are_redacted_in_the_access_log(tmp_path):
    port, access_log, output = free_port(), tmp_path / "access.log", tmp_path / "server.log"
    env = {**os.environ, "GATEWAY_VAR_DIR": str(tmp_path / "var"), "LOG_LEVEL": "DEBUG"}
    with open(output, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--workers", "1", "--bind", f"127.0.0.1:{port}",
             "--no-collectstatic", "--access-log", str(access_log)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}/health", process)
        api_key, key, token = QUERY_SECRETS
        for query in (f"api_key={api_key}&limit=2", f"KEY={key}", f"model=x&Token={token}"):
            assert httpx.get(f"http://127.0.0.1:{port}/health?{query}").status_code == 200
        with connect(f"ws://127.0.0.1:{port}/v1/ws/chat?api_key={api_key}") as socket:
            assert "Do not put API keys in the URL" in socket.recv(timeout=10)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    logged = access_log.read_text()
    assert logged.count("/health?") == 3, logged
    assert "api_key=[redacted]&limit=2" in logged and "KEY=[redacted]" in logged
    assert "model=x&Token=[redacted]" in logged
    everything = logged + output.read_text()
    assert not [secret for secret in QUERY_SECRETS if secret in everything], everything
