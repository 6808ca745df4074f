"""The audit of requests that end early (docs/accounting.md, "How a request ends"), in production
shape: `manage.py serve` with two uvicorn workers, PostgreSQL and Redis, the fake provider as a
real server; every UsageRecord matched with what the fake provider billed for it (its ledger,
`GET /_fake/ledger`), request by request, for OpenAI, Anthropic and Gemini wire formats.

The way each request ends is made with the fake's directives and real clients: an answer that
completes, a stream the provider cuts, an HTTP client that closes the connection mid-stream, a
WebSocket `chat.cancel` and a WebSocket closed mid-stream, and a client that leaves before the
provider accepted the request or after it accepted it but before its first token. Where the ledger
says the provider counted a side, the record has the same number; where the gateway counted, the
documented bound holds. `AUDIT_ROUNDS` (default 1) sets the requests per model and way of ending;
the table of figures printed at the end (`-s`) is the one in docs/accounting.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace

import httpx
import psycopg
import pytest
from websockets.asyncio.client import connect

from tests.conftest import stop_process
from tests.e2e.conftest import WIRE_FORMAT_MODELS as MODELS
from tests.e2e.conftest import WIRE_FORMATS_CONFIG, database_create, database_drop, fake_start
from tests.e2e.test_deployment import HTTPS, Server, deployment_configure, deployment_env

pytestmark = pytest.mark.e2e

# The providers that report their prompt count before their first token (Anthropic's
# message_start, Gemini's usageMetadata in every event); OpenAI's usage comes last, if at all.
PROMPT_EARLY = {"claude-haiku-4-5", "gemini-flash"}
# Gemini repeats its running counts in every event, from its first: before it, nothing.
# Tokens the provider's framing of a one-message prompt may add to (or take from) the gateway's count.
PROMPT_FRAMING = 4
# Gemini repeats its running completion count in every event.
COMPLETION_RUNNING = {"gemini-flash"}
ROUNDS = int(os.environ.get("AUDIT_ROUNDS", "1"))
# A long stream, paced: a gateway that did not stop its provider lets it run to the end.
LONG_CHUNKS, CHUNK_DELAY_MS = 150, 20
LONG = f"[[fake chunks={LONG_CHUNKS} chunk_delay_ms={CHUNK_DELAY_MS}]]"
READ_BEFORE_LEAVING = 5  # content deltas a leaving client reads first
RECORD_SQL = (
    "SELECT request_id::text, status, prompt_tokens, completion_tokens, cost_usd, prompt_tokens_estimated,"
    " completion_tokens_estimated, requested_model FROM accounting_usagerecord WHERE end_user = %s"
)


@dataclass
class Audit:
    base_url: str
    fake_url: str
    api_key: str
    database_url: str
    server: Server

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}", **HTTPS}

    def record(self, user: str, timeout: float = 15.0) -> dict:
        """The UsageRecord of the request sent with `user` (written as the request ends)."""
        deadline = time.monotonic() + timeout
        while True:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                rows = conn.execute(RECORD_SQL, (user,)).fetchall()
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(rows) == 1, f"{user}: {len(rows)} records"
        names = ("request_id", "status", "prompt", "completion", "cost", "prompt_estimated",
                 "completion_estimated", "model")
        return dict(zip(names, rows[0]))

    def ledger(self, request_id: str, timeout: float = 15.0) -> dict:
        """The fake's one ledger entry for the gateway's request `request_id`, once it has ended."""
        deadline = time.monotonic() + timeout
        while True:
            entries = httpx.get(f"{self.fake_url}/_fake/ledger", params={"request_id": request_id}).json()["data"]
            if (entries and all(e["ended"] for e in entries)) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(entries) == 1 and entries[0]["ended"], (request_id, entries)
        return entries[0]

    def ledger_since(self, count: int) -> list[dict]:
        return httpx.get(f"{self.fake_url}/_fake/ledger").json()["data"][count:]


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    database_url, name = database_create()
    tmp = tmp_path_factory.mktemp("audit")
    env = deployment_env(database_url, name, tmp)
    fake, fake_port = fake_start(env)
    server = None
    try:
        api_key = deployment_configure(env, WIRE_FORMATS_CONFIG.format(port=fake_port), tmp, key_name="audit")
        server = Server(SimpleNamespace(env=env), tmp / "serve.log", "--workers", "2")
        yield Audit(base_url=server.base_url, fake_url=f"http://127.0.0.1:{fake_port}", api_key=api_key,
                    database_url=database_url, server=server)
    finally:
        if server is not None:
            server.stop()
        stop_process(fake)
        database_drop(name)


def _body(model: str, directive: str, user: str, *, stream: bool) -> dict:
    return {
        "model": model, "stream": stream, "user": user,
        "messages": [{"role": "user", "content": f"{directive} audit {uuid.uuid4().hex}"}],
    }


async def _stream_leave(audit: Audit, body: dict, *, deltas: int) -> float:
    """Read `deltas` content deltas of a stream, then close the connection; when it was closed."""
    async with httpx.AsyncClient(base_url=audit.base_url, headers=audit.headers, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200, await response.aread()
            seen = 0
            async for line in response.aiter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    seen += 1
                    if seen == deltas:
                        return time.time()  # leaving the blocks closes the connection
    raise AssertionError("the stream ended before the client left")


async def _request_leave_when(audit: Audit, body: dict, ready) -> float:
    """Send the request and close the connection once `ready()` holds (polled on the ledger)."""
    async with httpx.AsyncClient(base_url=audit.base_url, headers=audit.headers, timeout=30) as client:
        sending = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
        while not await asyncio.to_thread(ready):
            assert not sending.done(), sending.result().text
            await asyncio.sleep(0.02)
        sending.cancel()  # closes the connection
        closed = time.time()
        try:
            await sending
        except asyncio.CancelledError:
            pass
        return closed


async def _socket_leave(audit: Audit, body: dict, *, deltas: int, how: str) -> float:
    """On a WebSocket: read `deltas` deltas, then `chat.cancel`, close the socket, or drop its
    connection without a closing handshake (a client that vanished)."""
    url = audit.base_url.replace("http://", "ws://") + "/v1/ws/chat"
    async with connect(url, additional_headers={"Authorization": f"Bearer {audit.api_key}"}) as socket:
        assert json.loads(await socket.recv())["type"] == "auth.ok"
        await socket.send(json.dumps({"type": "chat.request", "id": "r", **body}))
        seen = 0
        while seen < deltas:
            event = json.loads(await asyncio.wait_for(socket.recv(), timeout=30))
            assert event["type"] == "chat.delta", event
            seen += bool(event["content"])
        left = time.time()
        if how == "drop":
            socket.transport.abort()
            return left
        if how == "close":
            return left  # leaving the block closes the socket
        await socket.send(json.dumps({"type": "chat.cancel", "id": "r"}))
        while (event := json.loads(await asyncio.wait_for(socket.recv(), timeout=30)))["type"] != "chat.cancelled":
            assert event["type"] == "chat.delta", event
        return left


def _figures_add(figures: dict, way: str, record: dict, entry: dict, *, left: float | None = None) -> None:
    row = figures[way]
    row["requests"] += 1
    row["ledger_prompt"] += entry["prompt_tokens"]
    row["ledger_completion"] += entry["completion_tokens"]
    row["record_prompt"] += record["prompt"]
    row["record_completion"] += record["completion"]
    if left is not None:
        row["stop_ms"].append(max((entry["client_left_at"] or entry["last_frame_at"]) - left, 0) * 1000)


def _prompt_check(record: dict, entry: dict, *, reported: bool) -> None:
    """The prompt as the provider counted it where it reported it before the end (`reported`);
    else the gateway's count, within the framing the provider adds (the fake, like OpenAI, counts 4
    tokens a message where the gateway counts OpenAI's 3; Gemini frames its own way)."""
    if reported:
        assert (record["prompt"], record["prompt_estimated"]) == (entry["prompt_tokens"], False), (record, entry)
    else:
        assert record["prompt_estimated"] and abs(record["prompt"] - entry["prompt_tokens"]) <= PROMPT_FRAMING, (
            record, entry)


def test_every_way_of_ending_is_recorded_as_the_provider_billed_it(audit):
    figures: dict = defaultdict(lambda: {"requests": 0, "ledger_prompt": 0, "ledger_completion": 0,
                                   "record_prompt": 0, "record_completion": 0, "stop_ms": []})

    async def run() -> None:
        for round_ in range(ROUNDS):
            for model in MODELS:
                await _completed(model, round_)
                await _cut(model, round_)
                await _left(model, round_)
                await _before_accepted(model, round_)
                await _accepted_before_first_token(model, round_)

    async def _completed(model: str, round_: int) -> None:
        for stream in (False, True):
            user = f"completed-{stream}-{model}-{round_}"
            async with httpx.AsyncClient(base_url=audit.base_url, headers=audit.headers, timeout=30) as client:
                response = await client.post("/v1/chat/completions", json=_body(model, "[[fake chunks=12]]", user, stream=stream))
                assert response.status_code == 200, response.text
            record = audit.record(user)
            entry = audit.ledger(record["request_id"])
            assert entry["ended"] == "completed" and record["status"] == "success"
            assert (record["prompt"], record["completion"]) == (entry["prompt_tokens"], entry["completion_tokens"])
            assert not record["prompt_estimated"] and not record["completion_estimated"]
            _figures_add(figures, "completed", record, entry)

    async def _cut(model: str, round_: int) -> None:
        user = f"cut-{model}-{round_}"
        async with httpx.AsyncClient(base_url=audit.base_url, headers=audit.headers, timeout=30) as client:
            response = await client.post(
                "/v1/chat/completions", json=_body(model, "[[fake chunks=40 disconnect_after=6]]", user, stream=True)
            )
            assert response.status_code == 200 and '"error"' in response.text, response.text
        record = audit.record(user)
        entry = audit.ledger(record["request_id"])
        assert entry["ended"] == "cut" and entry["frames"] == 6 and record["status"] == "error", (record, entry)
        _prompt_check(record, entry, reported=model in PROMPT_EARLY)
        # Every frame the provider wrote before the cut was read: its count, or the same count made
        # by the gateway (one token a piece).
        assert record["completion"] == entry["completion_tokens"], (record, entry)
        assert record["completion_estimated"] == (model not in COMPLETION_RUNNING)
        _figures_add(figures, "cut by the provider", record, entry)

    async def _left(model: str, round_: int) -> None:
        ways = (
            ("client gone (HTTP)", lambda body: _stream_leave(audit, body, deltas=READ_BEFORE_LEAVING)),
            ("cancelled (WebSocket chat.cancel)",
             lambda body: _socket_leave(audit, body, deltas=READ_BEFORE_LEAVING, how="cancel")),
            ("client gone (WebSocket closed)",
             lambda body: _socket_leave(audit, body, deltas=READ_BEFORE_LEAVING, how="close")),
            ("client gone (WebSocket connection dropped)",
             lambda body: _socket_leave(audit, body, deltas=READ_BEFORE_LEAVING, how="drop")),
        )
        for way, leave in ways:
            user = f"{way}-{model}-{round_}"
            left = await leave(_body(model, LONG, user, stream=True))
            record = audit.record(user)
            entry = audit.ledger(record["request_id"])
            assert record["status"] == "cancelled" and entry["ended"] == "client_left", (way, record, entry)
            # The provider was stopped: it did not go on to the end of its answer.
            assert entry["frames"] < LONG_CHUNKS, (way, entry)
            _prompt_check(record, entry, reported=model in PROMPT_EARLY)
            # What the provider generated after the gateway stopped reading is the bound: the frames
            # it wrote from the client's leaving to its noticing the close, one token each, and one
            # more on the wire.
            after = math.ceil(max(entry["last_frame_at"] - left, 0) * 1000 / CHUNK_DELAY_MS) + 1
            assert READ_BEFORE_LEAVING <= record["completion"] <= entry["completion_tokens"], (way, record, entry)
            assert entry["completion_tokens"] - record["completion"] <= after, (way, record, entry, after)
            _figures_add(figures, way, record, entry, left=left)

    async def _before_accepted(model: str, round_: int) -> None:
        user = f"before-accepted-{model}-{round_}"
        known = len(audit.ledger_since(0))

        def received() -> bool:  # the provider holds it (its latency): received, not accepted
            return any(not e["ended"] for e in audit.ledger_since(known))

        await _request_leave_when(audit, _body(model, "[[fake delay_ms=20000]]", user, stream=True), received)
        record = audit.record(user)
        entry = audit.ledger(record["request_id"])
        assert record["status"] == "cancelled" and entry["ended"] == "client_left"
        assert (entry["prompt_tokens"], entry["completion_tokens"]) == (0, 0)
        assert (record["prompt"], record["completion"], record["cost"]) == (0, 0, 0), record
        _figures_add(figures, "cancelled before the provider accepted", record, entry)

    async def _accepted_before_first_token(model: str, round_: int) -> None:
        user = f"accepted-{model}-{round_}"
        known = len(audit.ledger_since(0))

        def accepted() -> bool:  # the provider's 200 went out, its first token is 20 s away
            return any(e["prompt_tokens"] and not e["ended"] for e in audit.ledger_since(known))

        await _request_leave_when(audit, _body(model, "[[fake ttft_ms=20000]]", user, stream=True), accepted)
        record = audit.record(user)
        entry = audit.ledger(record["request_id"])
        assert record["status"] == "cancelled" and entry["ended"] == "client_left"
        assert entry["completion_tokens"] == record["completion"] == 0, (record, entry)
        # Anthropic counts the prompt in message_start, before its first token; Gemini in its
        # first event, which carries the first token.
        _prompt_check(record, entry, reported=model == "claude-haiku-4-5")
        assert record["cost"] > 0
        _figures_add(figures, "cancelled after the provider accepted, before its first token", record, entry)

    asyncio.run(run())
    log = audit.server.log()
    assert "Task exception was never retrieved" not in log and "Traceback" not in log, log[-3000:]
    _figures_print(figures)


def _figures_print(figures: dict) -> None:
    print("\n| way of ending | requests | prompt tokens: ledger / records | completion tokens: ledger / records"
          " | provider stopped after the client left (ms): median / max |")
    print("| --- | --- | --- | --- | --- |")
    for way, row in figures.items():
        stops = sorted(row["stop_ms"])
        stop = f"{stops[len(stops) // 2]:.0f} / {stops[-1]:.0f}" if stops else "—"
        print(f"| {way} | {row['requests']} | {row['ledger_prompt']} / {row['record_prompt']} |"
              f" {row['ledger_completion']} / {row['record_completion']} | {stop} |")
