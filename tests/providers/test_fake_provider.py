"""The fake provider: wire formats and directives in-process, then the real server and the SDKs.

In-process tests drive `build_app()` through httpx.ASGITransport (which buffers whole responses,
so they check shapes, not timing). The `e2e` tests start `manage.py fake_provider` as a
subprocess and check what only a real socket shows: incremental streams, dropped and held
connections, and that the official openai and anthropic SDKs parse what the fake sends.
"""

import asyncio
import base64
import json
import math
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from providers.fake import build_app
from providers.fake.content import (
    DEFAULT_DIMENSIONS,
    DEFAULT_PIECES,
    WORDS,
    tokens_count,
)
from providers.fake.errors import FakeConnectionDrop

ROOT = Path(__file__).resolve().parents[2]
OPENAI_AUTH = {"authorization": "Bearer sk-test"}
ANTHROPIC_AUTH = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
ANTHROPIC_SEQUENCE_HEAD = ["message_start", "content_block_start", "ping"]
ANTHROPIC_SEQUENCE_TAIL = ["content_block_stop", "message_delta", "message_stop"]


def chat_body(text: str = "Hello there", **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def messages_body(text: str = "Hello there", **extra) -> dict:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 100,
            "messages": [{"role": "user", "content": text}]}
    return body | extra


def openai_chunks(text: str) -> list[dict]:
    data = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def anthropic_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in filter(None, text.split("\n\n")):
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        events.append((name_line.removeprefix("event: "), data))
    return events


@pytest.fixture
async def client():
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as c:
        yield c


async def chat(client, body: dict, headers: dict | None = None) -> httpx.Response:
    headers = OPENAI_AUTH | (headers or {})
    return await client.post("/v1/chat/completions", json=body, headers=headers)


async def messages(client, body: dict, headers: dict | None = None) -> httpx.Response:
    return await client.post("/v1/messages", json=body, headers=ANTHROPIC_AUTH | (headers or {}))


# --- OpenAI chat completions ------------------------------------------------------------------


async def test_chat_completion_has_openai_shape_and_counted_usage(client):
    response = await chat(client, chat_body())
    body = response.json()
    assert response.status_code == 200
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini" and isinstance(body["created"], int)
    assert body["system_fingerprint"].startswith("fp_")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["refusal"] is None
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    content = choice["message"]["content"]
    assert len(content.split()) == DEFAULT_PIECES
    usage = body["usage"]
    assert usage["completion_tokens"] == tokens_count(text=content) == DEFAULT_PIECES
    assert usage["prompt_tokens"] == 3 + 4 + tokens_count(text="Hello there")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_every_word_is_one_token():
    assert all(tokens_count(text=" " + word) == 1 for word in WORDS)


async def test_content_is_deterministic_and_ignores_directives(client):
    first = (await chat(client, chat_body())).json()["choices"][0]["message"]["content"]
    again = (await chat(client, chat_body("Hello there [[fake delay_ms=1]]"))).json()
    other_prompt = (await chat(client, chat_body("Goodbye"))).json()
    other_model = (await chat(client, chat_body() | {"model": "gpt-4o"})).json()
    assert again["choices"][0]["message"]["content"] == first
    assert other_prompt["choices"][0]["message"]["content"] != first
    assert other_model["choices"][0]["message"]["content"] != first


async def test_stream_pieces_join_to_the_plain_answer(client):
    plain = (await chat(client, chat_body())).json()["choices"][0]["message"]["content"]
    response = await chat(client, chat_body(stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = openai_chunks(response.text)
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert "".join(pieces) == plain and len(pieces) == DEFAULT_PIECES
    last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"][0] == last


async def test_stream_include_usage_adds_a_final_usage_chunk(client):
    response = await chat(client, chat_body(stream=True, stream_options={"include_usage": True}))
    chunks = openai_chunks(response.text)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == DEFAULT_PIECES
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_the_answer_with_length(client, field):
    body = (await chat(client, chat_body(**{field: 5}))).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    stream = openai_chunks((await chat(client, chat_body(stream=True, **{field: 5}))).text)
    assert len(stream) == 1 + 5 + 1 and stream[-1]["choices"][0]["finish_reason"] == "length"


async def test_chunks_directive_sets_the_answer_size(client):
    body = (await chat(client, chat_body("Hi [[fake chunks=3]]"))).json()
    assert body["usage"]["completion_tokens"] == 3
    assert len(body["choices"][0]["message"]["content"].split()) == 3


async def test_stop_sequence_cuts_before_it(client):
    content = (await chat(client, chat_body())).json()["choices"][0]["message"]["content"]
    stop = content.split()[4]
    body = (await chat(client, chat_body(stop=[stop]))).json()
    assert body["choices"][0]["message"]["content"] == content[: content.find(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_n_choices_are_each_billed_and_the_prompt_once(client):
    one = (await chat(client, chat_body(max_tokens=5))).json()
    three = (await chat(client, chat_body(n=3, max_tokens=5))).json()
    assert [choice["index"] for choice in three["choices"]] == [0, 1, 2]
    assert three["choices"][0] == one["choices"][0]  # choice 0 is the one-choice answer
    assert len({choice["message"]["content"] for choice in three["choices"]}) == 3
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert three["usage"]["completion_tokens"] == 3 * 5 == sum(
        tokens_count(text=choice["message"]["content"]) for choice in three["choices"])
    stream = openai_chunks((await chat(client, chat_body(n=3, max_tokens=5, stream=True))).text)
    texts = {index: "" for index in range(3)}
    for chunk in stream:
        [choice] = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content") or ""
    assert [texts[index] for index in range(3)] == [c["message"]["content"] for c in three["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in stream[-3:]] == ["length"] * 3
    refused = await chat(client, chat_body(n=129))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"


async def test_structured_answers_are_cut_by_max_tokens_in_tokens(client):
    schema = {"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"}}}}}
    whole = (await chat(client, chat_body("[[fake bad_json]] x", response_format=schema))).json()
    text = whole["choices"][0]["message"]["content"]
    assert text.startswith("Here you go: {") and json.loads(text.removeprefix("Here you go: "))
    assert whole["usage"]["completion_tokens"] == tokens_count(text=text) > 6
    cut = (await chat(client, chat_body("[[fake bad_json]] x", response_format=schema, max_tokens=6))).json()
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 6
    assert text.startswith(cut["choices"][0]["message"]["content"])


async def test_the_ledger_counts_the_tokens_of_every_answer_generated(client):
    await chat(client, chat_body(n=2, max_tokens=4))
    await chat(client, chat_body("[[fake status=500]]"))  # no answer, nothing billed
    with pytest.raises(FakeConnectionDrop):  # in process, the drop raises inside the app
        await chat(client, chat_body("cut [[fake disconnect_after=1]]", stream=True, max_tokens=3))
    await client.post("/v1/embeddings", json={"model": "m", "input": "alpha beta"}, headers=OPENAI_AUTH)
    prompt = 3 + 4 + tokens_count(text="Hello there")
    usage = (await client.get("/_fake/stats")).json()["usage"]
    cut = 3 + 4 + tokens_count(text="cut [[fake disconnect_after=1]]")  # a directive is prompt text too
    assert usage == {"prompt_tokens": prompt + cut + tokens_count(text="alpha beta"),
                     "completion_tokens": 2 * 4 + 1}  # a cut stream bills the frame written


# --- the per-request ledger (GET /_fake/ledger) ---------------------------------------------------


async def ledger(client, request_id: str | None = None) -> list[dict]:
    params = {"request_id": request_id} if request_id else {}
    return (await client.get("/_fake/ledger", params=params)).json()["data"]


def is_content(body: bytes) -> bool:
    """An OpenAI content frame (not the role chunk that leads the stream)."""
    return b'"content":"' in body and b'"role"' not in body


async def asgi_drive(
    app, body: dict, *, leave_after: int | None = None, leave_at_once: bool = False,
    request_id: str = "req-drive",
) -> list[bytes]:
    """POST a chat request over raw ASGI, as a server would, and return the body messages sent.

    The client leaves (`http.disconnect`) as soon as the request is read (`leave_at_once`) or
    when `leave_after` content frames have been sent to it; a dropped connection ends the drive.
    """
    left, sent, requested = asyncio.Event(), [], False
    if leave_at_once:
        left.set()

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            sent.append(message["body"])
            if leave_after is not None and sum(map(is_content, sent)) >= leave_after:
                left.set()
        if message["type"] == "http.response.body" and not message.get("more_body"):
            left.set()  # done: a server then reports the connection closed

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
             "headers": [(b"authorization", b"Bearer sk-test"), (b"x-request-id", request_id.encode())]}
    try:
        await app(scope, receive, send)
    except FakeConnectionDrop:
        pass
    return sent


def streamed_text(frames: list[bytes]) -> str:
    """The text of the OpenAI content frames among `frames`."""
    return "".join(json.loads(frame[6:])["choices"][0]["delta"]["content"]
                   for frame in frames if is_content(frame))


async def test_the_ledger_of_a_completed_stream_is_what_was_streamed(client):
    body = chat_body(stream=True, stream_options={"include_usage": True})
    response = await chat(client, body, headers={"x-request-id": "req-whole"})
    chunks = openai_chunks(response.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    [entry] = await ledger(client, "req-whole")
    assert entry["prompt_tokens"] == chunks[-1]["usage"]["prompt_tokens"]
    assert entry["completion_tokens"] == chunks[-1]["usage"]["completion_tokens"] == tokens_count(text=text)
    assert entry["frames"] == DEFAULT_PIECES and entry["ended"] == "completed"
    assert entry["path"] == "/v1/chat/completions" and entry["model"] == "gpt-4o-mini" and entry["stream"]
    assert entry["received_at"] <= entry["first_frame_at"] <= entry["last_frame_at"]
    assert entry["client_left_at"] is None
    usage = (await client.get("/_fake/stats")).json()["usage"]
    assert usage == {"prompt_tokens": entry["prompt_tokens"], "completion_tokens": entry["completion_tokens"]}


@pytest.mark.parametrize("dialect", ["anthropic", "gemini"])
async def test_the_ledger_of_a_completed_stream_is_its_usage_in_every_dialect(client, dialect):
    headers = {"x-request-id": f"req-{dialect}"}
    if dialect == "anthropic":
        text = (await client.post("/v1/messages", json=messages_body(stream=True),
                                  headers=ANTHROPIC_AUTH | headers)).text
        events = dict(anthropic_events(text))  # the last event of each name
        usage = {"prompt_tokens": events["message_start"]["message"]["usage"]["input_tokens"],
                 "completion_tokens": events["message_delta"]["usage"]["output_tokens"]}
    else:
        text = (await client.post("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                                  json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
                                  headers={"x-goog-api-key": "g"} | headers)).text
        last = json.loads([line for line in text.split("\r\n") if line.startswith("data: ")][-1][6:])
        usage = {"prompt_tokens": last["usageMetadata"]["promptTokenCount"],
                 "completion_tokens": last["usageMetadata"]["candidatesTokenCount"]}
    [entry] = await ledger(client, headers["x-request-id"])
    assert {k: entry[k] for k in usage} == usage and entry["completion_tokens"] > 0
    assert entry["ended"] == "completed" and entry["stream"] and entry["frames"] == DEFAULT_PIECES


async def test_the_ledger_of_a_plain_answer_and_of_embeddings_bills_them_whole(client):
    body = (await chat(client, chat_body(n=2), headers={"x-request-id": "req-plain"})).json()
    await client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "alpha beta"},
                      headers=OPENAI_AUTH | {"x-request-id": "req-embed"})
    [plain] = await ledger(client, "req-plain")
    [embed] = await ledger(client, "req-embed")
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == (
        body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    assert plain["frames"] == 0 and plain["first_frame_at"] is None and not plain["stream"]
    assert embed == embed | {"path": "/v1/embeddings", "model": "text-embedding-3-small", "stream": False,
                             "prompt_tokens": tokens_count(text="alpha beta"), "completion_tokens": 0,
                             "ended": "completed"}


async def test_a_cut_stream_bills_the_frames_written():
    app = build_app()
    body = chat_body("Hi [[fake chunks=8 disconnect_after=3]]", stream=True)
    sent = await asgi_drive(app, body, request_id="req-cut")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fake") as c:
        [entry] = await ledger(c, "req-cut")
    assert sum(map(is_content, sent)) == entry["frames"] == 3
    assert entry["completion_tokens"] == tokens_count(text=streamed_text(sent)) == 3
    assert entry["prompt_tokens"] > 0 and entry["ended"] == "cut"


async def test_a_client_that_leaves_stops_the_stream_at_the_next_frame():
    app = build_app()
    body = chat_body("Hi [[fake chunks=20]]", stream=True)
    sent = await asgi_drive(app, body, leave_after=4, request_id="req-left")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fake") as c:
        [entry] = await ledger(c, "req-left")
        usage = (await c.get("/_fake/stats")).json()["usage"]
    assert sum(map(is_content, sent)) == entry["frames"] == 4  # none after the client was seen leaving
    assert entry["completion_tokens"] == tokens_count(text=streamed_text(sent)) == 4
    assert entry["ended"] == "client_left" and entry["prompt_tokens"] > 0
    assert entry["last_frame_at"] <= entry["client_left_at"]
    assert b"[DONE]" not in b"".join(sent)
    assert usage == {"prompt_tokens": entry["prompt_tokens"], "completion_tokens": 4}


async def test_a_client_gone_during_the_latency_is_not_billed():
    app = build_app(latency_ms=600_000)  # the client's leaving ends the wait, not the clock
    sent = await asgi_drive(app, chat_body(stream=True), leave_at_once=True, request_id="req-gone")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fake") as c:
        [entry] = await ledger(c, "req-gone")
        usage = (await c.get("/_fake/stats")).json()["usage"]
    assert sent == [] and entry["ended"] == "client_left" and entry["client_left_at"] is not None
    assert (entry["prompt_tokens"], entry["completion_tokens"], entry["frames"]) == (0, 0, 0)
    assert usage == {"prompt_tokens": 0, "completion_tokens": 0}


async def test_an_error_is_in_the_ledger_and_not_billed(client):
    assert (await chat(client, chat_body("[[fake status=500]]", stream=True),
                       headers={"x-request-id": "req-500"})).status_code == 500
    assert (await chat(client, chat_body(), headers={"authorization": "", "x-request-id": "req-401"})
            ).status_code == 401
    for request_id in ("req-500", "req-401"):
        [entry] = await ledger(client, request_id)
        assert entry["ended"] == "error" and entry["model"] == "gpt-4o-mini"
        assert (entry["prompt_tokens"], entry["completion_tokens"], entry["frames"]) == (0, 0, 0)
    assert (await client.get("/_fake/stats")).json()["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}


async def test_the_ledger_lists_chat_and_embeddings_requests_and_is_cleared(client):
    await chat(client, chat_body())
    await chat(client, chat_body(), headers={"x-request-id": "req-b"})
    await client.get("/v1/models", headers=OPENAI_AUTH)  # neither chat nor embeddings
    await client.get("/_fake/stats")
    entries = await ledger(client)
    assert [e["request_id"] for e in entries] == [None, "req-b"]
    assert await ledger(client, "req-missing") == []
    assert (await client.delete("/_fake/ledger")).json() == {"data": []}
    assert await ledger(client) == []
    assert (await client.get("/_fake/stats")).json()["usage"]["prompt_tokens"] > 0  # totals stay
    await chat(client, chat_body())
    await client.post("/_fake/reset")
    assert await ledger(client) == []

async def test_directive_in_text_parts_of_last_user_message(client):
    body = chat_body()
    body["messages"] = [
        {"role": "user", "content": "[[fake status=500]] ignored: not the last user message"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "Hi [[fake chunks=2]]"}]},
    ]
    response = await chat(client, body)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2


async def test_missing_or_wrong_key_is_401_invalid_api_key():
    app = build_app(api_key="secret")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f") as c:
        missing = await c.post("/v1/chat/completions", json=chat_body())
        wrong = await c.post("/v1/chat/completions", json=chat_body(), headers=OPENAI_AUTH)
        right = await c.post("/v1/chat/completions", json=chat_body(),
                             headers={"authorization": "Bearer secret"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == 200


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "missing_required_parameter"),
        ({"model": "gpt-4o"}, "messages", "missing_required_parameter"),
        ({"model": "gpt-4o", "messages": []}, "messages", "empty_array"),
        ({"model": "gpt-4o", "messages": "hi"}, "messages", "invalid_type"),
        ({"model": "gpt-4o", "messages": [{"role": "robot"}]}, "messages[0].role", "invalid_value"),
        (chat_body(max_tokens=0), "max_tokens", "invalid_value"),
    ],
)
async def test_invalid_chat_requests_name_the_param(client, body, param, code):
    response = await chat(client, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == code


async def test_body_that_is_not_json_is_400(client):
    response = await client.post("/v1/chat/completions", content=b"{nope", headers=OPENAI_AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_status_429_with_retry_after_is_openai_rate_limit(client):
    response = await chat(client, chat_body("Hi [[fake status=429 retry_after=2]]"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["x-ratelimit-reset-requests"] == "2s"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("status", [500, 503])
async def test_header_directive_injects_server_errors(client, status):
    response = await chat(client, chat_body(), headers={"x-fake-directive": f"status={status}"})
    assert response.status_code == status
    assert response.json()["error"]["type"] == "server_error"


async def test_context_length_exceeded_is_openai_400(client):
    response = await chat(client, chat_body("Hi [[fake context_length_exceeded]]"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"


async def test_quote_key_answers_an_error_quoting_the_key_whole(client):
    openai_error = await chat(client, chat_body("Hi [[fake quote_key]]"))
    assert openai_error.status_code == 401
    assert "Incorrect API key provided: sk-test." in openai_error.json()["error"]["message"]
    anthropic_error = await client.post("/v1/messages", json=messages_body("Hi [[fake quote_key status=403]]"),
                                        headers=ANTHROPIC_AUTH)
    assert anthropic_error.status_code == 403
    assert "Incorrect API key provided: sk-ant-test." in anthropic_error.json()["error"]["message"]


async def test_unknown_directive_is_rejected(client):
    response = await chat(client, chat_body("Hi [[fake status=500 explode]]"))
    assert response.status_code == 400 and "explode" in response.json()["error"]["message"]


async def test_no_usage_drops_usage_everywhere(client):
    plain = (await chat(client, chat_body("Hi [[fake no_usage]]"))).json()
    stream = await chat(client, chat_body("Hi [[fake no_usage]]", stream=True,
                                          stream_options={"include_usage": True}))
    chunks = openai_chunks(stream.text)
    assert "usage" not in plain
    assert all(c["usage"] is None for c in chunks) and chunks[-1]["choices"][0]["finish_reason"]


async def test_malformed_breaks_the_json(client):
    plain = await chat(client, chat_body("Hi [[fake malformed]]"))
    stream = await chat(client, chat_body("Hi [[fake malformed]]", stream=True))
    assert plain.status_code == 200
    with pytest.raises(ValueError):
        json.loads(plain.text)
    with pytest.raises(ValueError):
        openai_chunks(stream.text)
    assert stream.text.rstrip().endswith("data: [DONE]")


async def test_server_latency_delays_answers_and_delay_ms_replaces_it():
    app = build_app(latency_ms=500)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f") as c:
        tokens_count(text="warm the encoding up")
        started = time.monotonic()
        await c.post("/v1/chat/completions", json=chat_body("Hi [[fake delay_ms=0]]"),
                     headers=OPENAI_AUTH)
        directed = time.monotonic() - started
        started = time.monotonic()
        await c.post("/v1/chat/completions", json=chat_body(), headers=OPENAI_AUTH)
        default = time.monotonic() - started
    assert directed < 0.5 <= default


async def test_server_chunk_delay_paces_streams():
    app = build_app(chunk_delay_ms=50)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f") as c:
        started = time.monotonic()
        await c.post("/v1/chat/completions", json=chat_body("Hi [[fake chunks=6]]", stream=True),
                     headers=OPENAI_AUTH)
    assert time.monotonic() - started >= 5 * 0.05


async def test_timeout_holds_the_request(client):
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(chat(client, chat_body("Hi [[fake timeout]]")), 0.3)


async def test_disconnect_after_raises_inside_the_app(client):
    with pytest.raises(FakeConnectionDrop):
        await chat(client, chat_body("Hi [[fake disconnect_after=2]]", stream=True))


# --- OpenAI embeddings and models -------------------------------------------------------------


async def test_embeddings_float_and_base64_agree_and_are_unit_norm(client):
    body = {"model": "text-embedding-3-small", "input": ["alpha", "beta"]}
    floats = (await client.post("/v1/embeddings", json=body, headers=OPENAI_AUTH)).json()
    encoded = (await client.post("/v1/embeddings", json=body | {"encoding_format": "base64"},
                                 headers=OPENAI_AUTH)).json()
    assert floats["object"] == "list" and [d["index"] for d in floats["data"]] == [0, 1]
    vectors = [d["embedding"] for d in floats["data"]]
    decoded = [list(struct.unpack("<1536f", base64.b64decode(d["embedding"])))
               for d in encoded["data"]]
    assert decoded == vectors and len(vectors[0]) == DEFAULT_DIMENSIONS
    assert vectors[0] != vectors[1]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert floats["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


async def test_embeddings_accept_token_arrays_and_dimensions(client):
    body = {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4, 5]], "dimensions": 8}
    response = (await client.post("/v1/embeddings", json=body, headers=OPENAI_AUTH)).json()
    assert [len(d["embedding"]) for d in response["data"]] == [8, 8]
    assert response["usage"]["prompt_tokens"] == 5
    single = {"model": "text-embedding-3-small", "input": [1, 2, 3], "dimensions": 8}
    again = (await client.post("/v1/embeddings", json=single, headers=OPENAI_AUTH)).json()
    assert again["data"][0]["embedding"] == response["data"][0]["embedding"]


async def test_embeddings_reject_bad_input_and_format(client):
    empty = await client.post("/v1/embeddings", json={"model": "m", "input": []},
                              headers=OPENAI_AUTH)
    bad = await client.post("/v1/embeddings", json={"model": "m", "input": "x",
                                                     "encoding_format": "hex"}, headers=OPENAI_AUTH)
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "input"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "encoding_format"


async def test_models_lists_in_each_vendor_shape(client):
    openai_list = (await client.get("/v1/models", headers=OPENAI_AUTH)).json()
    anthropic_list = (await client.get("/v1/models", headers=ANTHROPIC_AUTH)).json()
    assert openai_list["object"] == "list"
    assert {"gpt-4o-mini", "text-embedding-3-small"} <= {m["id"] for m in openai_list["data"]}
    assert all(m["type"] == "model" and m["id"].startswith("claude")
               for m in anthropic_list["data"])
    assert anthropic_list["has_more"] is False


async def test_unknown_route_is_404_in_vendor_shape(client):
    openai_404 = await client.post("/v1/nope", json={}, headers=OPENAI_AUTH)
    anthropic_404 = await client.post("/v1/messages/nope", json={}, headers=ANTHROPIC_AUTH)
    assert openai_404.status_code == 404
    assert "(POST /v1/nope)" in openai_404.json()["error"]["message"]
    assert anthropic_404.status_code == 404
    assert anthropic_404.json()["type"] == "error"
    assert anthropic_404.json()["error"]["type"] == "not_found_error"


# --- Anthropic messages -----------------------------------------------------------------------


async def test_message_has_anthropic_shape(client):
    response = await messages(client, messages_body(system="Be brief."))
    body = response.json()
    assert response.status_code == 200 and response.headers["request-id"].startswith("req_")
    assert body["id"].startswith("msg_") and body["type"] == "message"
    assert body["role"] == "assistant" and body["model"] == "claude-sonnet-4-6"
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["content"][0]["type"] == "text"
    assert body["usage"]["output_tokens"] == DEFAULT_PIECES
    assert body["usage"]["input_tokens"] == tokens_count(text="Be brief.") + 3 + tokens_count(
        text="Hello there")


async def test_message_stream_follows_the_documented_sequence(client):
    plain = (await messages(client, messages_body())).json()
    events = anthropic_events((await messages(client, messages_body(stream=True))).text)
    names = [name for name, _ in events]
    assert names == (ANTHROPIC_SEQUENCE_HEAD + ["content_block_delta"] * DEFAULT_PIECES
                     + ANTHROPIC_SEQUENCE_TAIL)
    assert all(data["type"] == name for name, data in events)
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == plain["content"][0]["text"]
    start, delta = events[0][1]["message"], events[-2][1]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == plain["usage"]["output_tokens"]


async def test_message_max_tokens_and_stop_sequences(client):
    short = (await messages(client, messages_body(max_tokens=3))).json()
    assert short["stop_reason"] == "max_tokens" and short["usage"]["output_tokens"] == 3
    text = (await messages(client, messages_body())).json()["content"][0]["text"]
    stop = text.split()[3]
    cut = (await messages(client, messages_body(stop_sequences=[stop]))).json()
    assert cut["stop_reason"] == "stop_sequence" and cut["stop_sequence"] == stop
    assert cut["content"][0]["text"] == text[: text.find(stop)]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "claude", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (messages_body(max_tokens=0), "max_tokens"),
        (messages_body() | {"messages": []}, "messages"),
        (messages_body() | {"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        (messages_body(system=[{"type": "image"}]), "system"),
        (messages_body(temperature=3), "temperature"),
    ],
)
async def test_invalid_messages_are_invalid_request_errors(client, body, fragment):
    response = await messages(client, body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fragment in response.json()["error"]["message"]


async def test_message_without_api_key_is_authentication_error(client):
    response = await client.post("/v1/messages", json=messages_body())
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("directive", "status", "kind"),
    [("status=529", 529, "overloaded_error"), ("status=429 retry_after=4", 429, "rate_limit_error"),
     ("status=500", 500, "api_error"), ("context_length_exceeded", 400, "invalid_request_error")],
)
async def test_anthropic_injected_errors(client, directive, status, kind):
    response = await messages(client, messages_body(f"Hi [[fake {directive}]]"))
    body = response.json()
    assert response.status_code == status and body["error"]["type"] == kind
    assert body["request_id"] == response.headers["request-id"]
    if status == 429:
        assert response.headers["retry-after"] == "4"
    if "context" in directive:
        assert body["error"]["message"].startswith("prompt is too long")


# --- stats --------------------------------------------------------------------------------------


async def test_stats_count_upstream_calls_and_reset(client):
    await chat(client, chat_body())
    await chat(client, chat_body("[[fake status=500]]"))
    await messages(client, messages_body())
    stats = (await client.get("/_fake/stats")).json()
    assert stats["requests"] == 3 and stats["by_path"] == {"/v1/chat/completions": 2, "/v1/messages": 1}
    await client.post("/_fake/reset")
    zero = {"requests": 0, "by_path": {}, "usage": {"prompt_tokens": 0, "completion_tokens": 0}}
    assert (await client.get("/_fake/stats")).json() == zero


# --- server-wide directive -----------------------------------------------------------------------


async def put_directive(client, directive: object) -> httpx.Response:
    return await client.put("/_fake/directive", json={"directive": directive})


async def read_directive(client) -> str:
    response = await client.get("/_fake/directive")
    assert response.status_code == 200
    return response.json()["directive"]


async def test_server_directive_is_empty_by_default_and_fails_every_request(client):
    assert await read_directive(client) == ""
    put = await put_directive(client, " [[fake status=500  retry_after=1]] ")
    assert put.status_code == 200 and put.json() == {"directive": "status=500 retry_after=1"}
    assert await read_directive(client) == "status=500 retry_after=1"
    for _ in range(2):  # sticky: not used up by the first request
        failed = await chat(client, chat_body())
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        assert failed.headers["retry-after"] == "1"
    anthropic_failed = await messages(client, messages_body())
    assert anthropic_failed.status_code == 500
    assert anthropic_failed.json()["error"]["type"] == "api_error"
    embedding = await client.post("/v1/embeddings", json={"model": "m", "input": "x"},
                                  headers=OPENAI_AUTH)
    assert embedding.status_code == 500
    stats = (await client.get("/_fake/stats")).json()
    assert stats["requests"] == 4  # the control endpoints are not counted, failures are


async def test_server_directive_belongs_to_one_app(client):
    await put_directive(client, "status=503")
    other = build_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=other),
                                 base_url="http://other") as healthy:
        assert (await chat(healthy, chat_body())).status_code == 200
        assert await read_directive(healthy) == ""
    assert (await chat(client, chat_body())).status_code == 503


async def test_request_directive_overrides_server_directive_key_by_key(client):
    await put_directive(client, "status=500 retry_after=1")
    by_message = await chat(client, chat_body("Hi [[fake status=429]]"))
    assert by_message.status_code == 429 and by_message.headers["retry-after"] == "1"
    by_header = await chat(client, chat_body(), headers={"x-fake-directive": "retry_after=7"})
    assert by_header.status_code == 500 and by_header.headers["retry-after"] == "7"
    both = await chat(client, chat_body("Hi [[fake status=429]]"),
                      headers={"x-fake-directive": "status=503 retry_after=3"})
    assert both.status_code == 429 and both.headers["retry-after"] == "3"
    opted_out = await messages(client, messages_body("Hi [[fake status=0]]"))
    assert opted_out.status_code == 200 and opted_out.json()["type"] == "message"
    assert await read_directive(client) == "status=500 retry_after=1"  # requests do not change it


async def test_server_directive_other_keys_apply_to_answers(client):
    await put_directive(client, "chunks=3 no_usage")
    body = (await chat(client, chat_body())).json()
    assert len(body["choices"][0]["message"]["content"].split()) == 3 and "usage" not in body
    body = (await chat(client, chat_body("Hi [[fake chunks=5]]"))).json()
    assert len(body["choices"][0]["message"]["content"].split()) == 5 and "usage" not in body


async def test_delete_clears_the_server_directive(client):
    await put_directive(client, "status=500")
    deleted = await client.delete("/_fake/directive")
    assert deleted.status_code == 200 and deleted.json() == {"directive": ""}
    assert await read_directive(client) == ""
    assert (await chat(client, chat_body())).status_code == 200


async def test_put_empty_directive_clears_it(client):
    await put_directive(client, "status=500")
    assert (await put_directive(client, "")).json() == {"directive": ""}
    assert (await chat(client, chat_body())).status_code == 200


async def test_reset_clears_the_server_directive(client):
    await put_directive(client, "status=500")
    await chat(client, chat_body())
    reset = await client.post("/_fake/reset")
    assert reset.status_code == 200 and reset.json()["requests"] == 0 and reset.json()["by_path"] == {}
    assert await read_directive(client) == ""
    assert (await chat(client, chat_body())).status_code == 200


@pytest.mark.parametrize("directive", ["status=500 explode", "status=abc", "status=-1", 500, None])
async def test_bad_server_directive_is_400_and_keeps_the_old_one(client, directive):
    await put_directive(client, "status=503")
    response = await put_directive(client, directive)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "invalid_request_error"
    if directive == "status=500 explode":
        assert "explode" in response.json()["error"]["message"]
    assert await read_directive(client) == "status=503"
    assert (await chat(client, chat_body())).status_code == 503


async def test_put_directive_needs_a_json_object(client):
    for content in (b"{nope", b'"status=500"'):
        response = await client.put("/_fake/directive", content=content)
        assert response.status_code == 400 and "error" in response.json()
    assert await read_directive(client) == ""


async def test_build_app_directive_keyword():
    app = build_app(directive="status=529")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f") as c:
        assert await read_directive(c) == "status=529"
        response = await messages(c, messages_body())
        assert response.status_code == 529
        assert response.json()["error"]["type"] == "overloaded_error"
    with pytest.raises(ValueError, match="explode"):
        build_app(directive="status=500 explode")


def test_command_rejects_a_bad_directive_flag(monkeypatch):
    from django.core.management import CommandError, call_command

    def serve(**kwargs):
        raise AssertionError(f"started with a bad directive: {kwargs['directive']!r}")

    monkeypatch.setattr("providers.management.commands.fake_provider.serve", serve)
    with pytest.raises(CommandError, match="explode"):
        call_command("fake_provider", "--port", "0", "--directive", "status=500 explode")


# --- the real server ----------------------------------------------------------------------------


def start_fake(*args: str) -> tuple[subprocess.Popen, str]:
    """Start `manage.py fake_provider` on a free port and wait for its "listening" line."""
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "fake_provider", "--port", "0", *args], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=log, text=True, env=os.environ.copy(),
    )
    ready, _, _ = select.select([process.stdout], [], [], 30)
    line = process.stdout.readline() if ready else ""
    if "listening on http://" not in line:
        process.kill()
        log.seek(0)
        pytest.fail(f"fake provider did not start: {line!r} {log.read().decode()[-2000:]}")
    return process, line.strip().rsplit(" ", 1)[-1]


def stop_fake(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def fake_url():
    process, url = start_fake()
    yield url
    stop_fake(process)


def stream_content(response: httpx.Response) -> list[tuple[float, str]]:
    """Arrival time and text of each OpenAI content chunk, read off the socket as it comes."""
    arrived = []
    for line in response.iter_lines():
        if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
            chunk = json.loads(line[6:])
            arrived.append((time.monotonic(), chunk["choices"][0]["delta"]["content"]))
    return arrived


@pytest.mark.e2e
def test_real_stream_arrives_incrementally(fake_url):
    body = chat_body("Hi [[fake chunks=4 ttft_ms=300 chunk_delay_ms=200]]", stream=True)
    started = time.monotonic()
    with httpx.stream("POST", f"{fake_url}/v1/chat/completions", json=body, headers=OPENAI_AUTH,
                      timeout=10) as response:
        headers_at = time.monotonic() - started
        arrived = stream_content(response)
    times = [t - started for t, _ in arrived]
    assert len(arrived) == 4
    assert headers_at < times[0] - 0.2  # headers before the first-token wait
    assert times[0] >= 0.3
    assert all(later - earlier >= 0.15 for earlier, later in zip(times, times[1:]))


@pytest.mark.e2e
def test_real_disconnect_after_cuts_the_connection(fake_url):
    body = chat_body("Hi [[fake chunks=6 disconnect_after=2]]", stream=True)
    for _ in range(2):  # twice: stock daphne would hang the client, and stop reaping after one
        received: list[str] = []
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            with httpx.stream("POST", f"{fake_url}/v1/chat/completions", json=body,
                              headers=OPENAI_AUTH, timeout=5) as response:
                for line in response.iter_lines():
                    received.append(line)
        content = [line for line in received if '"content":"' in line and '"role"' not in line]
        assert len(content) == 2 and "data: [DONE]" not in received
    healthy = httpx.post(f"{fake_url}/v1/chat/completions", json=chat_body(), headers=OPENAI_AUTH)
    assert healthy.status_code == 200


@pytest.mark.e2e
def test_real_timeout_holds_until_the_client_gives_up(fake_url):
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{fake_url}/v1/chat/completions", json=chat_body("Hi [[fake timeout]]"),
                   headers=OPENAI_AUTH, timeout=httpx.Timeout(5, read=0.7))
    assert 0.7 <= time.monotonic() - started < 3


@pytest.mark.e2e
def test_real_stall_after_never_finishes_the_stream(fake_url):
    body = chat_body("Hi [[fake chunks=5 stall_after=2]]", stream=True)
    arrived: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream("POST", f"{fake_url}/v1/chat/completions", json=body,
                          headers=OPENAI_AUTH, timeout=httpx.Timeout(5, read=0.7)) as response:
            for line in response.iter_lines():
                arrived.append(line)
    assert len([line for line in arrived if '"content":"' in line and '"role"' not in line]) == 2


@pytest.mark.e2e
def test_real_stats_count_requests(fake_url):
    httpx.post(f"{fake_url}/_fake/reset")
    httpx.post(f"{fake_url}/v1/chat/completions", json=chat_body(), headers=OPENAI_AUTH)
    httpx.post(f"{fake_url}/v1/messages", json=messages_body(), headers=ANTHROPIC_AUTH)
    assert httpx.get(f"{fake_url}/_fake/stats").json()["requests"] == 2


def ledger_ended(fake_url: str, request_id: str, timeout: float = 10.0) -> dict:
    """The request's ledger entry once it has ended (the fake notices a client leave by itself)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = httpx.get(f"{fake_url}/_fake/ledger", params={"request_id": request_id}).json()["data"]
        if (entries and entries[0]["ended"]) or time.monotonic() > deadline:
            assert len(entries) == 1 and entries[0]["ended"], entries
            return entries[0]
        time.sleep(0.05)


@pytest.mark.e2e
def test_real_client_that_leaves_is_billed_the_frames_written_and_no_more(fake_url):
    headers = OPENAI_AUTH | {"x-request-id": "req-real-left",
                             "x-fake-directive": "chunks=500 chunk_delay_ms=20"}
    with httpx.stream("POST", f"{fake_url}/v1/chat/completions", json=chat_body(stream=True),
                      headers=headers, timeout=10) as response:
        received = []
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                received.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
            if len(received) == 3:
                leaving_at = time.time()
                break  # the line iterator goes with it, and closes the connection
    entry = ledger_ended(fake_url, "req-real-left")
    assert entry["ended"] == "client_left" and 3 <= entry["frames"] < 500
    # Every piece is one token: what the client read, and what was written after it.
    assert entry["completion_tokens"] == entry["frames"] and tokens_count(text="".join(received)) == 3
    assert leaving_at <= entry["client_left_at"] and entry["last_frame_at"] <= entry["client_left_at"]
    assert entry["prompt_tokens"] == 3 + 4 + tokens_count(text="Hello there")


@pytest.mark.e2e
def test_real_cut_and_gone_during_latency_in_the_ledger(fake_url):
    headers = OPENAI_AUTH | {"x-request-id": "req-real-cut", "x-fake-directive": "chunks=6 disconnect_after=2"}
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        with httpx.stream("POST", f"{fake_url}/v1/chat/completions", json=chat_body(stream=True),
                          headers=headers, timeout=5) as response:
            list(response.iter_lines())
    cut = ledger_ended(fake_url, "req-real-cut")
    assert (cut["ended"], cut["frames"], cut["completion_tokens"]) == ("cut", 2, 2)
    headers = OPENAI_AUTH | {"x-request-id": "req-real-gone", "x-fake-directive": "delay_ms=600000"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{fake_url}/v1/chat/completions", json=chat_body(), headers=headers,
                   timeout=httpx.Timeout(5, read=0.3))
    gone = ledger_ended(fake_url, "req-real-gone")
    assert gone["ended"] == "client_left" and gone["client_left_at"] is not None
    assert (gone["prompt_tokens"], gone["completion_tokens"]) == (0, 0)

@pytest.mark.e2e
def test_openai_sdk_parses_completion_stream_and_embeddings(fake_url):
    client = openai.OpenAI(base_url=f"{fake_url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}])
    assert completion.choices[0].message.content.strip()
    assert completion.usage.completion_tokens == DEFAULT_PIECES
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}], stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == completion.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == completion.usage.total_tokens
    default = client.embeddings.create(model="text-embedding-3-small", input="alpha")  # base64
    floats = client.embeddings.create(model="text-embedding-3-small", input="alpha",
                                      encoding_format="float")
    assert default.data[0].embedding == floats.data[0].embedding
    assert len(default.data[0].embedding) == DEFAULT_DIMENSIONS


@pytest.mark.e2e
def test_openai_sdk_sees_rate_limit(fake_url):
    client = openai.OpenAI(base_url=f"{fake_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "[[fake status=429]]"}])
    assert caught.value.code == "rate_limit_exceeded"


@pytest.mark.e2e
def test_anthropic_sdk_parses_message_and_stream(fake_url):
    client = anthropic.Anthropic(base_url=fake_url, api_key="x", max_retries=0)
    request = {"model": "claude-sonnet-4-6", "max_tokens": 50,
               "messages": [{"role": "user", "content": "Hello there"}]}
    message = client.messages.create(**request)
    with client.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert message.content[0].text and final.content[0].text == message.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == message.usage.output_tokens
    assert final.usage.input_tokens == message.usage.input_tokens


@pytest.mark.e2e
@pytest.mark.parametrize(("status", "error"), [(429, anthropic.RateLimitError),
                                               (529, anthropic.OverloadedError)])
def test_anthropic_sdk_sees_injected_errors(fake_url, status, error):
    client = anthropic.Anthropic(base_url=fake_url, api_key="x", max_retries=0)
    with pytest.raises(error) as caught:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[
            {"role": "user", "content": f"Hi [[fake status={status} retry_after=1]]"}])
    assert caught.value.status_code == status
    assert caught.value.response.headers["retry-after"] == "1"


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_command_exits_cleanly_on_signal(signum):
    process, url = start_fake("--api-key", "only-this")
    assert httpx.post(f"{url}/v1/chat/completions", json=chat_body(), headers=OPENAI_AUTH,
                      ).status_code == 401
    process.send_signal(signum)
    assert process.wait(10) == 0


@pytest.mark.e2e
def test_command_directive_flag_fails_only_that_server(fake_url):
    process, url = start_fake("--directive", "status=503 retry_after=2")
    try:
        shown = httpx.get(f"{url}/_fake/directive").json()
        assert shown == {"directive": "status=503 retry_after=2"}
        for _ in range(2):
            failed = httpx.post(f"{url}/v1/chat/completions", json=chat_body(),
                                headers=OPENAI_AUTH)
            assert failed.status_code == 503 and failed.headers["retry-after"] == "2"
        other = httpx.post(f"{fake_url}/v1/chat/completions", json=chat_body(),
                           headers=OPENAI_AUTH)
        assert other.status_code == 200  # the other fake process keeps serving
        assert httpx.delete(f"{url}/_fake/directive").json() == {"directive": ""}
        healthy = httpx.post(f"{url}/v1/chat/completions", json=chat_body(), headers=OPENAI_AUTH)
        assert healthy.status_code == 200
    finally:
        stop_fake(process)
