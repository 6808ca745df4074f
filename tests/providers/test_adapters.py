"""Adapter translation tests: the network is stubbed at the edge with respx, and each test asserts
the exact JSON sent upstream and the exact OpenAI-shaped body parsed back.

Fixtures under `fixtures/` follow the vendors' documented bodies:
https://platform.openai.com/docs/api-reference/chat/object,
https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import respx

from gateway_site.errors import PROVIDER_ERROR_CLASSES, InvalidRequest, ProviderError
from providers.adapters import ADAPTERS
from providers.adapters.anthropic import DEFAULT_MAX_TOKENS, AnthropicAdapter
from providers.adapters.base import Adapter, Target, Usage
from providers.adapters.openai import OpenAIAdapter

FIXTURES = Path(__file__).parent / "fixtures"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
SSE = {"content-type": "text/event-stream"}

OPENAI = Target(
    provider_id=1,
    provider_name="p",
    wire_type="openai",
    api_base="https://api.openai.com/v1",
    upstream_model="gpt-4o-mini",
    api_key="sk-test",
)
ANTHROPIC = Target(
    provider_id=1,
    provider_name="p",
    wire_type="anthropic",
    api_base="https://api.anthropic.com",
    upstream_model="claude-sonnet-4-5",
    api_key="sk-test",
)
HELLO = [{"role": "user", "content": "Hello"}]
STREAM = {"messages": HELLO, "stream": True}


def fixture_json(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def first_event(name: str) -> bytes:
    return fixture_bytes(name).split(b"\n\n")[0] + b"\n\n"


def sent_json(route: respx.Route) -> dict:
    return json.loads(route.calls.last.request.content)


def without_created(body: dict) -> dict:
    """The adapter stamps `created` with the clock; check it is now, then compare the rest."""
    assert isinstance(body["created"], int)
    assert abs(body["created"] - time.time()) < 60
    return {key: value for key, value in body.items() if key != "created"}


def deltas(chunks: list[dict]) -> list[dict]:
    return [chunk["choices"][0]["delta"] for chunk in chunks]


async def stream_until_error(
    adapter: Adapter, target: Target, payload: dict = STREAM
) -> tuple[list[dict], ProviderError]:
    chunks = []
    with pytest.raises(ProviderError) as caught:
        async for chunk in adapter.chat_stream(payload, target):
            chunks.append(chunk)
    return chunks, caught.value


@pytest.fixture
def upstream():
    with respx.mock(assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def client():
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def openai(client: httpx.AsyncClient) -> OpenAIAdapter:
    return OpenAIAdapter(client)


@pytest.fixture
def anthropic(client: httpx.AsyncClient) -> AnthropicAdapter:
    return AnthropicAdapter(client)


def test_registry_maps_wire_types_to_adapters():
    assert ADAPTERS["openai"] is OpenAIAdapter
    assert ADAPTERS["anthropic"] is AnthropicAdapter
    assert AnthropicAdapter.wire_type == "anthropic"


# --- OpenAI ---------------------------------------------------------------------------------


async def test_openai_chat_sends_payload_with_upstream_model(upstream, openai):
    completion = fixture_json("openai_chat_completion.json")
    route = upstream.post(OPENAI_URL).respond(200, json=completion)
    payload = {"model": "alias", "messages": HELLO, "temperature": 0.2, "seed": 7}

    result = await openai.chat(payload, OPENAI)

    assert sent_json(route) == {**payload, "model": "gpt-4o-mini"}
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-test"
    assert result.body == completion
    assert result.usage == Usage(prompt_tokens=19, completion_tokens=10)


async def test_openai_without_key_sends_no_authorization(upstream, client):
    completion = fixture_json("openai_chat_completion.json")
    route = upstream.post(OPENAI_URL).respond(200, json=completion)
    keyless = Target(**{**OPENAI.__dict__, "api_key": ""})

    await OpenAIAdapter(client).chat({"messages": HELLO}, keyless)

    assert "authorization" not in route.calls.last.request.headers


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}])
async def test_openai_stream_always_asks_for_usage(upstream, openai, stream_options):
    stream = fixture_bytes("openai_chat_stream.txt")
    route = upstream.post(OPENAI_URL).respond(200, content=stream, headers=SSE)
    payload = {"model": "alias", **STREAM}
    if stream_options is not None:
        payload["stream_options"] = stream_options

    chunks = [chunk async for chunk in openai.chat_stream(payload, OPENAI)]

    assert sent_json(route) == {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    expected = [
        json.loads(line.removeprefix("data: "))
        for line in stream.decode().splitlines()
        if line.startswith("data: {")
    ]
    assert chunks == expected
    assert [delta.get("content") for delta in deltas(chunks[:3])] == ["", "Hello", "!"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


async def test_openai_embeddings(upstream, openai):
    embeddings = fixture_json("openai_embeddings.json")
    route = upstream.post("https://api.openai.com/v1/embeddings").respond(200, json=embeddings)

    result = await openai.embeddings({"model": "alias", "input": "hello world"}, OPENAI)

    assert sent_json(route) == {"model": "gpt-4o-mini", "input": "hello world"}
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-test"
    assert result.body == embeddings
    assert result.usage == Usage(prompt_tokens=8, completion_tokens=0)


async def test_openai_error_object_mid_stream(upstream, openai):
    error = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
    body = first_event("openai_chat_stream.txt") + f"data: {json.dumps({'error': error})}\n\n".encode()
    upstream.post(OPENAI_URL).respond(200, content=body, headers=SSE)

    chunks, exc = await stream_until_error(openai, OPENAI)

    assert len(chunks) == 1
    assert exc.error_class == "rate_limited"
    assert exc.retryable is True
    assert exc.message == "Provider 'p' failed mid-stream: Rate limit reached"


@pytest.mark.parametrize(
    ("status", "type_", "code", "message", "error_class"),
    [
        (400, "invalid_request_error", None, "Invalid 'messages'.", "bad_request"),
        (401, "invalid_request_error", "invalid_api_key", "Incorrect API key.", "auth"),
        (429, "requests", "rate_limit_exceeded", "Rate limit reached.", "rate_limited"),
        (500, "server_error", None, "The server had an error.", "upstream_server"),
        (
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "This model's maximum context length is 128000 tokens.",
            "context_length_exceeded",
        ),
    ],
)
async def test_openai_error_mapping(upstream, openai, status, type_, code, message, error_class):
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    upstream.post(OPENAI_URL).respond(status, json=body, headers={"retry-after": "20"})

    with pytest.raises(ProviderError) as caught:
        await openai.chat({"messages": HELLO}, OPENAI)

    exc = caught.value
    assert exc.error_class == error_class
    assert (exc.status, exc.retryable) == PROVIDER_ERROR_CLASSES[error_class]
    assert exc.upstream_status == status
    assert exc.retry_after == 20.0
    assert exc.message == f"Provider 'p' returned {status}: {message}"


async def test_openai_529_without_json_body_is_overloaded(upstream, openai):
    upstream.post(OPENAI_URL).respond(529, text="overloaded")

    with pytest.raises(ProviderError) as caught:
        await openai.chat({"messages": HELLO}, OPENAI)

    assert caught.value.error_class == "overloaded"
    assert caught.value.retryable is True
    assert caught.value.retry_after is None
    assert caught.value.message == "Provider 'p' returned 529: overloaded"


# --- Anthropic: requests --------------------------------------------------------------------


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image_url(url: str, **extra: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


async def test_anthropic_request_translation(upstream, anthropic):
    route = upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))
    payload = {
        "model": "alias",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [text("Answer in "), text("French.")]},
            {"role": "user", "content": "What is in these pictures?"},
            {
                "role": "user",
                "content": [
                    image_url("data:image/png;base64,iVBORw0KGgo="),
                    image_url("https://example.com/cat.jpg", detail="high"),
                ],
            },
            {"role": "assistant", "content": "Un chat."},
            {"role": "user", "content": "Et la couleur ?", "name": "ann"},
        ],
        "max_completion_tokens": 300,
        "max_tokens": 50,
        "stop": "\n\nHuman:",
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "user-42",
        "n": 1,
        "response_format": {"type": "text"},
        # Dropped: no Anthropic counterpart, and none changes what the client relies on.
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
        "logit_bias": {"50256": -100},
        "parallel_tool_calls": False,
        "service_tier": "auto",
        "store": False,
        "metadata": {"team": "search"},
        "stream_options": {"include_usage": True},
    }

    await anthropic.chat(payload, ANTHROPIC)

    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    assert sent_json(route) == {
        "model": "claude-sonnet-4-5",
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [
            {
                "role": "user",
                "content": [
                    text("What is in these pictures?"),
                    {"type": "image", "source": png},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                ],
            },
            {"role": "assistant", "content": "Un chat."},
            {"role": "user", "content": "Et la couleur ?"},
        ],
        "max_tokens": 300,
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.5,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
    }


async def test_anthropic_headers(upstream, anthropic):
    route = upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))

    await anthropic.chat({"messages": HELLO}, ANTHROPIC)

    headers = route.calls.last.request.headers
    assert headers["x-api-key"] == "sk-test"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


async def test_anthropic_minimal_request_gets_default_max_tokens(upstream, anthropic):
    route = upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))

    await anthropic.chat({"model": "alias", "messages": HELLO}, ANTHROPIC)

    assert DEFAULT_MAX_TOKENS == 4096
    assert sent_json(route) == {"model": "claude-sonnet-4-5", "messages": HELLO, "max_tokens": 4096}


async def test_anthropic_default_max_tokens_is_the_models_output_cap(upstream, anthropic):
    route = upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))
    capped = Target(**{**ANTHROPIC.__dict__, "max_output_tokens": 8192})

    await anthropic.chat({"model": "alias", "messages": HELLO}, capped)

    assert sent_json(route)["max_tokens"] == 8192


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"max_tokens": 50}, {"max_tokens": 50}),
        ({"stop": ["END", "STOP"]}, {"stop_sequences": ["END", "STOP"]}),
        ({"stream": False}, {"stream": False}),
    ],
)
async def test_anthropic_parameter_translation(upstream, anthropic, extra, expected):
    route = upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))

    await anthropic.chat({"messages": HELLO, **extra}, ANTHROPIC)

    base = {"model": "claude-sonnet-4-5", "messages": HELLO, "max_tokens": DEFAULT_MAX_TOKENS}
    assert sent_json(route) == {**base, **expected}


TOOL_MESSAGE = {"role": "tool", "tool_call_id": "c1", "content": "42"}
FUNCTION = {"name": "f", "parameters": {}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": FUNCTION}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [FUNCTION]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"messages": [*HELLO, TOOL_MESSAGE]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [image_url("ftp://x/y.png")]}]}, "messages"),
    ],
)
async def test_anthropic_refuses_what_it_cannot_honour(upstream, anthropic, extra, param):
    route = upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))

    with pytest.raises(InvalidRequest) as caught:
        await anthropic.chat({"messages": HELLO, **extra}, ANTHROPIC)

    assert caught.value.param == param
    assert caught.value.status == 400
    assert not route.called


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [{"type": "function", "function": FUNCTION}]},
        {"messages": [*HELLO, TOOL_MESSAGE]},
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}]},
    ],
)
def test_anthropic_tool_refusals_say_not_yet(anthropic, extra):
    with pytest.raises(InvalidRequest, match="not supported yet for Anthropic providers"):
        anthropic.chat_request({"messages": HELLO, **extra}, ANTHROPIC)


async def test_anthropic_has_no_embeddings(upstream, anthropic):
    with pytest.raises(InvalidRequest) as caught:
        await anthropic.embeddings({"input": "hello"}, ANTHROPIC)

    assert caught.value.param == "model"
    assert not upstream.calls


# --- Anthropic: responses -------------------------------------------------------------------


async def test_anthropic_response_translation(upstream, anthropic):
    upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))

    result = await anthropic.chat({"messages": HELLO}, ANTHROPIC)

    assert without_created(result.body) == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "model": "claude-sonnet-4-5-20250929",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! How can I help you today?",
                    "refusal": None,
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        # 12 input + 100 cache writes + 2000 cache reads: all billed as prompt.
        "usage": {
            "prompt_tokens": 2112, "completion_tokens": 9, "total_tokens": 2121,
            "prompt_tokens_details": {"cached_tokens": 2000},  # cache reads, billed at the cached price
        },
    }
    assert result.usage == Usage(prompt_tokens=2112, completion_tokens=9, cached_tokens=2000)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
async def test_anthropic_stop_reasons(upstream, anthropic, stop_reason, finish_reason):
    body = {**fixture_json("anthropic_message.json"), "stop_reason": stop_reason}
    upstream.post(ANTHROPIC_URL).respond(200, json=body)

    result = await anthropic.chat({"messages": HELLO}, ANTHROPIC)

    assert result.body["choices"][0]["finish_reason"] == finish_reason


async def test_anthropic_usage_without_cache_fields_and_without_usage(upstream, anthropic):
    plain = {**fixture_json("anthropic_message.json"), "usage": {"input_tokens": 5, "output_tokens": 3}}
    no_usage = {key: value for key, value in plain.items() if key != "usage"}
    upstream.post(ANTHROPIC_URL).mock(
        side_effect=[httpx.Response(200, json=plain), httpx.Response(200, json=no_usage)]
    )

    first = await anthropic.chat({"messages": HELLO}, ANTHROPIC)
    second = await anthropic.chat({"messages": HELLO}, ANTHROPIC)

    assert first.usage == Usage(prompt_tokens=5, completion_tokens=3)
    assert first.body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert second.usage is None
    assert "usage" not in second.body


async def test_anthropic_message_without_content_is_malformed(upstream, anthropic):
    upstream.post(ANTHROPIC_URL).respond(200, json={"type": "message", "id": "msg_1"})

    with pytest.raises(ProviderError) as caught:
        await anthropic.chat({"messages": HELLO}, ANTHROPIC)

    assert caught.value.error_class == "upstream_server"


# --- Anthropic: streams ---------------------------------------------------------------------


async def test_anthropic_stream_translation(upstream, anthropic):
    stream = fixture_bytes("anthropic_message_stream.txt")
    route = upstream.post(ANTHROPIC_URL).respond(200, content=stream, headers=SSE)
    payload = {"model": "alias", **STREAM, "stream_options": {"include_usage": True}}

    chunks = [chunk async for chunk in anthropic.chat_stream(payload, ANTHROPIC)]

    assert sent_json(route) == {
        "model": "claude-sonnet-4-5",
        "messages": HELLO,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "stream": True,
    }
    assert len({chunk["created"] for chunk in chunks}) == 1
    envelope = {
        "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
        "object": "chat.completion.chunk",
        "model": "claude-sonnet-4-5-20250929",
    }

    def choice(delta: dict, finish_reason: str | None = None) -> dict:
        only = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**envelope, "choices": [only]}

    # 25 input + 10 cache writes + 300 cache reads; output from message_delta (cumulative).
    usage = {
        "prompt_tokens": 335, "completion_tokens": 15, "total_tokens": 350,
        "prompt_tokens_details": {"cached_tokens": 300},
    }
    assert [without_created(chunk) for chunk in chunks] == [
        choice({"role": "assistant", "content": ""}),
        choice({"content": "Hello"}),
        choice({"content": "!"}),
        choice({}, "stop"),
        {**envelope, "choices": [], "usage": usage},
    ]


def sse(*events: tuple[str, dict]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def event(name: str, **fields: object) -> tuple[str, dict]:
    return name, {"type": name, **fields}


MESSAGE_START = event("message_start", message={"id": "msg_2", "model": "claude-x", "content": []})
TEXT_DELTA = event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hi"})
MESSAGE_DELTA = event("message_delta", delta={"stop_reason": "max_tokens"})
MESSAGE_STOP = event("message_stop")


async def test_anthropic_stream_without_usage_has_no_usage_chunk(upstream, anthropic):
    thinking = event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hmm"})
    body = sse(MESSAGE_START, thinking, TEXT_DELTA, MESSAGE_DELTA, MESSAGE_STOP)
    upstream.post(ANTHROPIC_URL).respond(200, content=body, headers=SSE)

    chunks = [chunk async for chunk in anthropic.chat_stream(STREAM, ANTHROPIC)]

    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "Hi"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in chunk for chunk in chunks)


async def test_anthropic_stream_ending_before_message_stop_is_malformed(upstream, anthropic):
    body = sse(MESSAGE_START, TEXT_DELTA, MESSAGE_DELTA)
    upstream.post(ANTHROPIC_URL).respond(200, content=body, headers=SSE)

    chunks, exc = await stream_until_error(anthropic, ANTHROPIC)

    assert len(chunks) == 3
    assert exc.error_class == "upstream_server"
    assert "ended before message_stop" in exc.message


async def test_anthropic_error_event_mid_stream(upstream, anthropic):
    body = fixture_bytes("anthropic_stream_error.txt")
    upstream.post(ANTHROPIC_URL).respond(200, content=body, headers=SSE)

    chunks, exc = await stream_until_error(anthropic, ANTHROPIC)

    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "Hel"}]
    assert exc.error_class == "overloaded"
    assert exc.retryable is True
    assert exc.message == "Provider 'p' failed mid-stream: Overloaded"


async def test_anthropic_stream_data_that_is_not_json_is_malformed(upstream, anthropic):
    body = sse(MESSAGE_START) + b"event: content_block_delta\ndata: {not json\n\n"
    upstream.post(ANTHROPIC_URL).respond(200, content=body, headers=SSE)

    chunks, exc = await stream_until_error(anthropic, ANTHROPIC)

    assert len(chunks) == 1
    assert exc.error_class == "upstream_server"


# --- Anthropic: errors ----------------------------------------------------------------------


def anthropic_error(type_: str, message: str) -> dict:
    error = {"type": type_, "message": message}
    return {"type": "error", "error": error, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


TOO_LONG = "prompt is too long: 207791 tokens > 200000 maximum"
OVER_CONTEXT = "input length and `max_tokens` exceed context limit: 178959 + 64000 > 200000"
RATE_LIMITED = "Number of request tokens has exceeded your per-minute rate limit"


@pytest.mark.parametrize(
    ("status", "type_", "message", "error_class"),
    [
        (400, "invalid_request_error", "messages: text content blocks must be non-empty", "bad_request"),
        (400, "invalid_request_error", TOO_LONG, "context_length_exceeded"),
        (400, "invalid_request_error", OVER_CONTEXT, "context_length_exceeded"),
        (400, "invalid_request_error", "Output blocked by content filtering policy", "content_filtered"),
        (401, "authentication_error", "invalid x-api-key", "auth"),
        (403, "permission_error", "Your API key does not have permission.", "auth"),
        (404, "not_found_error", "model: claude-nope", "bad_request"),
        (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", "bad_request"),
        (429, "rate_limit_error", RATE_LIMITED, "rate_limited"),
        (500, "api_error", "Internal server error", "upstream_server"),
        (529, "overloaded_error", "Overloaded", "overloaded"),
        # An error type Anthropic adds later falls back to the class of the status.
        (503, "brand_new_error", "Try later", "overloaded"),
    ],
)
async def test_anthropic_error_mapping(upstream, anthropic, status, type_, message, error_class):
    upstream.post(ANTHROPIC_URL).respond(status, json=anthropic_error(type_, message))

    with pytest.raises(ProviderError) as caught:
        await anthropic.chat({"messages": HELLO}, ANTHROPIC)

    exc = caught.value
    assert exc.error_class == error_class
    assert (exc.status, exc.retryable) == PROVIDER_ERROR_CLASSES[error_class]
    assert exc.upstream_status == status
    assert exc.message == f"Provider 'p' returned {status}: {message}"


async def test_anthropic_rate_limit_carries_retry_after(upstream, anthropic):
    body = anthropic_error("rate_limit_error", RATE_LIMITED)
    upstream.post(ANTHROPIC_URL).respond(429, json=body, headers={"retry-after": "17"})

    chunks, exc = await stream_until_error(anthropic, ANTHROPIC)

    assert chunks == []
    assert exc.error_class == "rate_limited"
    assert exc.retry_after == 17.0
    assert exc.headers == {"retry-after": "17"}


# --- both adapters: transport and body failures ---------------------------------------------

BOTH = [
    pytest.param(OpenAIAdapter, OPENAI, OPENAI_URL, "openai_chat_stream.txt", id="openai"),
    pytest.param(
        AnthropicAdapter, ANTHROPIC, ANTHROPIC_URL, "anthropic_message_stream.txt", id="anthropic"
    ),
]


@pytest.mark.parametrize(("adapter_class", "target", "url", "stream_fixture"), BOTH)
async def test_body_that_is_not_json_is_upstream_server(
    upstream, client, adapter_class, target, url, stream_fixture
):
    html = {"content-type": "text/html"}
    upstream.post(url).respond(200, content=b"<html>502 Bad Gateway</html>", headers=html)

    with pytest.raises(ProviderError) as caught:
        await adapter_class(client).chat({"messages": HELLO}, target)

    assert caught.value.error_class == "upstream_server"
    assert caught.value.retryable is True
    assert caught.value.upstream_status == 200


@pytest.mark.parametrize(("adapter_class", "target", "url", "stream_fixture"), BOTH)
@pytest.mark.parametrize(
    ("failure", "error_class"),
    [
        (httpx.ReadTimeout("timed out"), "timeout"),
        (httpx.ConnectTimeout("timed out"), "timeout"),
        (httpx.ConnectError("connection refused"), "connection"),
        (httpx.RemoteProtocolError("peer closed connection"), "connection"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_transport_failures(
    upstream, client, adapter_class, target, url, stream_fixture, failure, error_class, stream
):
    upstream.post(url).mock(side_effect=failure)
    adapter: Adapter = adapter_class(client)
    payload = {"messages": HELLO, "stream": stream}

    with pytest.raises(ProviderError) as caught:
        if stream:
            _ = [chunk async for chunk in adapter.chat_stream(payload, target)]
        else:
            await adapter.chat(payload, target)

    assert caught.value.error_class == error_class
    assert caught.value.retryable is True
    assert caught.value.status == PROVIDER_ERROR_CLASSES[error_class][0]


class _StallingStream(httpx.AsyncByteStream):
    """A body that sends one event, then times out: a provider stalling mid-answer."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self):
        yield self.first
        raise httpx.ReadTimeout("stalled")


@pytest.mark.parametrize(("adapter_class", "target", "url", "stream_fixture"), BOTH)
async def test_timeout_mid_stream(upstream, client, adapter_class, target, url, stream_fixture):
    stalling = _StallingStream(first_event(stream_fixture))
    upstream.post(url).respond(200, stream=stalling, headers=SSE)

    chunks, exc = await stream_until_error(adapter_class(client), target)

    assert len(chunks) == 1
    assert exc.error_class == "timeout"
    assert exc.retryable is True
