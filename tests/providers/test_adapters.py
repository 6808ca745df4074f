"""Adapter wire tests: each adapter sends through the client production uses, over real sockets, to
a local server that answers as the provider would (`upstream.py`); each test asserts the exact
JSON and headers sent upstream and the exact OpenAI-shaped body parsed back.

Fixtures under `fixtures/` follow the vendors' documented bodies:
https://platform.openai.com/docs/api-reference/chat/object,
https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import pytest

from kernel.errors import PROVIDER_ERROR_CLASSES, InvalidRequest, ProviderError
from providers.adapters import ADAPTERS
from providers.adapters.anthropic import DEFAULT_MAX_TOKENS, AnthropicAdapter
from providers.adapters.anthropic.tools import JSON_TOOL_DESCRIPTION
from providers.adapters.base import Adapter, Target, Usage
from providers.adapters.openai import OpenAIAdapter
from providers.transport import Timeouts, UpstreamClient
from tests.providers.upstream import UPSTREAM, Reply, Route, Unanswered, refused_url

FIXTURES = Path(__file__).parent / "fixtures"
OPENAI_URL = f"{UPSTREAM.url}/v1/chat/completions"
ANTHROPIC_URL = f"{UPSTREAM.url}/v1/messages"
SSE = {"content-type": "text/event-stream"}

OPENAI = Target(
    provider_id=1,
    provider_name="p",
    wire_type="openai",
    api_base=f"{UPSTREAM.url}/v1",
    upstream_model="gpt-4o-mini",
    api_key="sk-test",
)
ANTHROPIC = Target(
    provider_id=1,
    provider_name="p",
    wire_type="anthropic",
    api_base=UPSTREAM.url,
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


def sent_json(route: Route) -> dict:
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
def openai(client: UpstreamClient) -> OpenAIAdapter:
    return OpenAIAdapter(client)


@pytest.fixture
def anthropic(client: UpstreamClient) -> AnthropicAdapter:
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
    route = upstream.post(f"{UPSTREAM.url}/v1/embeddings").respond(200, json=embeddings)

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


async def test_an_error_event_quoting_the_key_is_scrubbed(upstream, openai):
    """The key is the target's own (no key shape): only the exact-secret rule catches it."""
    target = dataclasses.replace(OPENAI, api_key="plain-upstream-secret-4d5e6f")
    error = {"message": "proxy refused plain-upstream-secret-4d5e6f", "type": "server_error"}
    body = first_event("openai_chat_stream.txt") + f"data: {json.dumps({'error': error})}\n\n".encode()
    upstream.post(OPENAI_URL).respond(200, content=body, headers=SSE)

    _, exc = await stream_until_error(openai, target)

    assert exc.message == "Provider 'p' failed mid-stream: proxy refused [redacted]"


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


FUNCTION = {"name": "f", "parameters": {}}
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": WEATHER_PARAMETERS,
        "strict": True,
    },
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": WEATHER_PARAMETERS,
}


def tool_call(call_id: str, arguments: str, name: str = "get_weather") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant_calls(*calls: dict, content: str | None = None) -> dict:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def tool_result(call_id: str, content: object) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"functions": [FUNCTION]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"messages": [*HELLO, {"role": "function", "name": "f", "content": "42"}]}, "messages[1].role"),
        (
            {"messages": [*HELLO, {"role": "assistant", "content": None, "function_call": FUNCTION}]},
            "messages[1].function_call",
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0]"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"messages": [*HELLO, {"role": "tool", "content": "42"}]}, "messages[1].tool_call_id"),
        ({"messages": [*HELLO, assistant_calls({"id": "c1"})]}, "messages[1].tool_calls[0]"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "l", "schema": {"type": "array"}}}},
            "response_format",
        ),
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
    ("arguments", "reason"),
    [('{"city": "Par', "is not valid JSON"), ("[1, 2]", "must be a JSON object")],
)
def test_anthropic_tool_call_arguments_must_be_a_json_object(anthropic, arguments, reason):
    messages = [*HELLO, assistant_calls(tool_call("call_1", arguments)), tool_result("call_1", "18C")]

    with pytest.raises(InvalidRequest, match=reason) as caught:
        anthropic.chat_request({"messages": messages, "tools": [WEATHER]}, ANTHROPIC)

    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"
    assert "'messages[1].tool_calls[0].function.arguments'" in caught.value.message


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
    upstream.post(ANTHROPIC_URL).respond_in_turn(Reply.of(200, json=plain), Reply.of(200, json=no_usage))

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
    # Counts so far: message_start's input (its output_tokens is a placeholder), message_delta's both.
    prompt_so_far = {"prompt_tokens": 335, "prompt_tokens_details": {"cached_tokens": 300}}
    assert [without_created(chunk) for chunk in chunks] == [
        {**choice({"role": "assistant", "content": ""}), "usage_so_far": prompt_so_far},
        choice({"content": "Hello"}),
        choice({"content": "!"}),
        {**choice({}, "stop"), "usage_so_far": {**prompt_so_far, "completion_tokens": 15}},
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
    assert all("usage" not in chunk and "usage_so_far" not in chunk for chunk in chunks)


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


# --- Anthropic: tools -----------------------------------------------------------------------


async def test_anthropic_tools_translation(upstream, anthropic):
    route = upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))
    no_parameters = {"type": "function", "function": {"name": "now"}}

    await anthropic.chat({"messages": HELLO, "tools": [WEATHER, no_parameters]}, ANTHROPIC)

    # `strict` has no Anthropic counterpart; a function without parameters takes an empty object.
    assert sent_json(route) == {
        "model": "claude-sonnet-4-5",
        "messages": HELLO,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "tools": [WEATHER_TOOL, {"name": "now", "input_schema": {"type": "object", "properties": {}}}],
    }


NAMED = {"type": "function", "function": {"name": "get_weather"}}
NO_PARALLEL = {"disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("tool_choice", "parallel_tool_calls", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (NAMED, None, {"type": "tool", "name": "get_weather"}),
        ("auto", True, {"type": "auto"}),
        (None, False, {"type": "auto", **NO_PARALLEL}),
        ("required", False, {"type": "any", **NO_PARALLEL}),
        (NAMED, False, {"type": "tool", "name": "get_weather", **NO_PARALLEL}),
        ("none", False, {"type": "none"}),  # nothing to run in parallel
    ],
)
def test_anthropic_tool_choice_translation(anthropic, tool_choice, parallel_tool_calls, expected):
    payload = {"messages": HELLO, "tools": [WEATHER], "tool_choice": tool_choice}
    if parallel_tool_calls is not None:
        payload["parallel_tool_calls"] = parallel_tool_calls

    body = anthropic.chat_request(payload, ANTHROPIC).json

    assert body["tool_choice"] == expected


def test_anthropic_without_tool_choice_sends_none(anthropic):
    assert "tool_choice" not in anthropic.chat_request({"messages": HELLO, "tools": [WEATHER]}, ANTHROPIC).json


async def test_anthropic_tool_history_translation(upstream, anthropic):
    route = upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))
    messages = [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        assistant_calls(tool_call("call_1", '{"city": "Paris"}'), tool_call("call_2", '{"city":"Rome","days":2}')),
        tool_result("call_1", "18C"),
        tool_result("call_2", [text("21C")]),
        {"role": "user", "content": "And now?"},
        assistant_calls(tool_call("call_3", "", name="now"), content="Let me check."),
        tool_result("call_3", ""),
    ]

    await anthropic.chat({"messages": messages, "tools": [WEATHER]}, ANTHROPIC)

    def tool_use(call_id: str, name: str, input_: dict) -> dict:
        return {"type": "tool_use", "id": call_id, "name": name, "input": input_}

    assert sent_json(route)["system"] == "Use the tools."
    assert sent_json(route)["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                tool_use("call_1", "get_weather", {"city": "Paris"}),
                tool_use("call_2", "get_weather", {"city": "Rome", "days": 2}),
            ],
        },
        # Consecutive tool results share one user turn, and the user's next words follow them.
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [text("21C")]},
                text("And now?"),
            ],
        },
        {"role": "assistant", "content": [text("Let me check."), tool_use("call_3", "now", {})]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_3"}]},
    ]


def test_anthropic_tool_results_go_before_text_in_their_turn(anthropic):
    messages = [
        *HELLO,
        assistant_calls(tool_call("call_1", '{"city": "Oslo"}'), content=""),
        {"role": "user", "content": "Quickly, please."},
        tool_result("call_1", "-3C"),
    ]

    body = anthropic.chat_request({"messages": messages, "tools": [WEATHER]}, ANTHROPIC).json

    assert body["messages"][1]["content"] == [  # the empty text is dropped: Anthropic refuses it
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    ]
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "-3C"}, text("Quickly, please.")],
    }


def anthropic_tool_use(tool_id: str, name: str, input_: dict) -> dict:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": input_}


def anthropic_message(*content: dict, stop_reason: str = "tool_use") -> dict:
    return {
        "id": "msg_tools",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 30, "output_tokens": 20},
    }


async def test_anthropic_tool_use_response_translation(upstream, anthropic):
    body = anthropic_message(
        text("Let me look."),
        anthropic_tool_use("toolu_1", "get_weather", {"city": "Paris", "days": 2}),
        anthropic_tool_use("toolu_2", "now", {}),
    )
    upstream.post(ANTHROPIC_URL).respond(200, json=body)

    result = await anthropic.chat({"messages": HELLO, "tools": [WEATHER]}, ANTHROPIC)

    assert result.body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris","days":2}'},
                    },
                    {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
                ],
            },
            "finish_reason": "tool_calls",
            "logprobs": None,
        }
    ]


async def test_anthropic_tool_use_only_has_null_content(upstream, anthropic):
    body = anthropic_message(anthropic_tool_use("toolu_1", "get_weather", {"city": "Paris"}))
    upstream.post(ANTHROPIC_URL).respond(200, json=body)

    result = await anthropic.chat({"messages": HELLO, "tools": [WEATHER]}, ANTHROPIC)

    message = result.body["choices"][0]["message"]
    assert message["content"] is None
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


def block_start(index: int, block: dict) -> tuple[str, dict]:
    return event("content_block_start", index=index, content_block=block)


def json_delta(index: int, partial: str) -> tuple[str, dict]:
    return event("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": partial})


def block_stop(index: int) -> tuple[str, dict]:
    return event("content_block_stop", index=index)


TOOL_USE_DELTA = event("message_delta", delta={"stop_reason": "tool_use"})


async def test_anthropic_stream_tool_call_deltas(upstream, anthropic):
    body = sse(
        MESSAGE_START,
        block_start(0, text("")),
        TEXT_DELTA,
        block_stop(0),
        block_start(1, anthropic_tool_use("toolu_1", "get_weather", {})),
        json_delta(1, ""),  # Anthropic often opens with an empty piece
        json_delta(1, '{"city":'),
        json_delta(1, ' "Paris"}'),
        block_stop(1),
        block_start(2, anthropic_tool_use("toolu_2", "now", {})),
        json_delta(2, "{}"),
        block_stop(2),
        TOOL_USE_DELTA,
        MESSAGE_STOP,
    )
    upstream.post(ANTHROPIC_URL).respond(200, content=body, headers=SSE)

    chunks = [chunk async for chunk in anthropic.chat_stream({**STREAM, "tools": [WEATHER]}, ANTHROPIC)]

    def start(index: int, call_id: str, name: str) -> dict:
        function = {"name": name, "arguments": ""}
        return {"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": function}]}

    def arguments(index: int, piece: str) -> dict:
        return {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}

    # OpenAI's index is the call's place among the tool calls, not Anthropic's block index.
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        start(0, "toolu_1", "get_weather"),
        arguments(0, '{"city":'),
        arguments(0, ' "Paris"}'),
        start(1, "toolu_2", "now"),
        arguments(1, "{}"),
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_anthropic_stream_input_json_delta_without_tool_block_is_malformed(upstream, anthropic):
    body = sse(MESSAGE_START, json_delta(3, '{"city":'), TOOL_USE_DELTA, MESSAGE_STOP)
    upstream.post(ANTHROPIC_URL).respond(200, content=body, headers=SSE)

    chunks, exc = await stream_until_error(anthropic, ANTHROPIC)

    assert len(chunks) == 1
    assert exc.error_class == "upstream_server"
    assert "input_json_delta" in exc.message


# --- Anthropic: structured output -----------------------------------------------------------

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True}}


@pytest.mark.parametrize(
    ("response_format", "tool"),
    [
        (JSON_SCHEMA, {"name": "verdict", "description": JSON_TOOL_DESCRIPTION, "input_schema": VERDICT_SCHEMA}),
        (
            {"type": "json_schema", "json_schema": {"schema": VERDICT_SCHEMA, "description": "A verdict."}},
            {"name": "json_response", "description": "A verdict.", "input_schema": VERDICT_SCHEMA},
        ),
        (
            {"type": "json_object"},
            {"name": "json_response", "description": JSON_TOOL_DESCRIPTION, "input_schema": {"type": "object"}},
        ),
    ],
)
async def test_anthropic_structured_output_forces_a_tool(upstream, anthropic, response_format, tool):
    route = upstream.post(ANTHROPIC_URL).respond(200, json=fixture_json("anthropic_message.json"))

    await anthropic.chat({"messages": HELLO, "response_format": response_format}, ANTHROPIC)

    assert sent_json(route) == {
        "model": "claude-sonnet-4-5",
        "messages": HELLO,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": tool["name"]},
    }


@pytest.mark.parametrize("response_format", [JSON_SCHEMA, {"type": "json_object"}])
def test_anthropic_refuses_tools_with_json_output(anthropic, response_format):
    payload = {"messages": HELLO, "tools": [WEATHER], "response_format": response_format}

    with pytest.raises(InvalidRequest, match="cannot be combined with 'tools'.*forcing a tool") as caught:
        anthropic.chat_request(payload, ANTHROPIC)

    assert caught.value.param == "response_format"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"), [("tool_use", "stop"), ("end_turn", "stop"), ("max_tokens", "length")]
)
async def test_anthropic_structured_output_answer_is_json_content(upstream, anthropic, stop_reason, finish_reason):
    verdict = anthropic_tool_use("toolu_1", "verdict", {"answer": "yes", "confidence": 0.9})
    upstream.post(ANTHROPIC_URL).respond(200, json=anthropic_message(verdict, stop_reason=stop_reason))

    result = await anthropic.chat({"messages": HELLO, "response_format": JSON_SCHEMA}, ANTHROPIC)

    assert result.body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": '{"answer":"yes","confidence":0.9}', "refusal": None},
            "finish_reason": finish_reason,
            "logprobs": None,
        }
    ]


async def test_anthropic_structured_output_stream_is_json_content(upstream, anthropic):
    usage_start = event(
        "message_start", message={"id": "msg_3", "model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}}
    )
    body = sse(
        usage_start,
        block_start(0, anthropic_tool_use("toolu_1", "verdict", {})),
        json_delta(0, ""),
        json_delta(0, '{"answer": "yes",'),
        json_delta(0, ' "confidence": 0.9}'),
        block_stop(0),
        event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 12}),
        MESSAGE_STOP,
    )
    upstream.post(ANTHROPIC_URL).respond(200, content=body, headers=SSE)
    payload = {**STREAM, "response_format": JSON_SCHEMA}

    chunks = [chunk async for chunk in anthropic.chat_stream(payload, ANTHROPIC)]

    assert deltas(chunks[:-1]) == [
        {"role": "assistant", "content": ""},
        {"content": '{"answer": "yes",'},
        {"content": ' "confidence": 0.9}'},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    content = "".join(delta.get("content", "") for delta in deltas(chunks[:-1]))
    assert json.loads(content) == {"answer": "yes", "confidence": 0.9}


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


def silent(upstream, target: Target, url: str, stack: contextlib.ExitStack) -> Target:
    """The provider reads the request and says nothing: the target's read timeout runs out."""
    upstream.post(url).silence()
    return dataclasses.replace(target, read_timeout=0.3)


def unanswered(upstream, target: Target, url: str, stack: contextlib.ExitStack) -> Target:
    """Nothing accepts the connection: the client's connect timeout runs out."""
    return dataclasses.replace(target, api_base=stack.enter_context(Unanswered()))


def refused(upstream, target: Target, url: str, stack: contextlib.ExitStack) -> Target:
    return dataclasses.replace(target, api_base=refused_url())


def hung_up(upstream, target: Target, url: str, stack: contextlib.ExitStack) -> Target:
    """The provider reads the request and closes the connection without an answer."""
    upstream.post(url).hang_up()
    return target


@pytest.mark.parametrize(("adapter_class", "target", "url", "stream_fixture"), BOTH)
@pytest.mark.parametrize(
    ("failure", "error_class"),
    [
        pytest.param(silent, "timeout", id="read-timeout"),
        pytest.param(unanswered, "timeout", id="connect-timeout"),
        pytest.param(refused, "connection", id="refused"),
        pytest.param(hung_up, "connection", id="closed-without-answer"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_transport_failures(
    upstream, adapter_class, target, url, stream_fixture, failure, error_class, stream
):
    payload = {"messages": HELLO, "stream": stream}
    with contextlib.ExitStack() as stack:
        target = failure(upstream, target, url, stack)
        client = UpstreamClient(timeouts=Timeouts(connect=0.3, read=5.0, pool=5.0))
        adapter: Adapter = adapter_class(client)
        try:
            with pytest.raises(ProviderError) as caught:
                if stream:
                    _ = [chunk async for chunk in adapter.chat_stream(payload, target)]
                else:
                    await adapter.chat(payload, target)
        finally:
            await client.aclose()

    assert caught.value.error_class == error_class
    assert caught.value.retryable is True
    assert caught.value.status == PROVIDER_ERROR_CLASSES[error_class][0]


@pytest.mark.parametrize(("adapter_class", "target", "url", "stream_fixture"), BOTH)
async def test_timeout_mid_stream(upstream, client, adapter_class, target, url, stream_fixture):
    """The provider sends one event, then nothing: the read timeout runs out mid-answer."""
    upstream.post(url).respond(200, stream=[first_event(stream_fixture)], stall=True, headers=SSE)
    stalling = dataclasses.replace(target, read_timeout=0.3)

    chunks, exc = await stream_until_error(adapter_class(client), stalling)

    assert len(chunks) == 1
    assert exc.error_class == "timeout"
    assert exc.retryable is True


@pytest.mark.parametrize(("adapter_class", "target", "url", "stream_fixture"), BOTH)
async def test_stream_cut_mid_answer(upstream, client, adapter_class, target, url, stream_fixture):
    """The provider sends one event and closes the connection: what it sent, then `connection`."""
    upstream.post(url).respond(200, stream=[first_event(stream_fixture)], cut=True, headers=SSE)

    chunks, exc = await stream_until_error(adapter_class(client), target)

    assert len(chunks) == 1
    assert exc.error_class == "connection"
    assert exc.retryable is True
