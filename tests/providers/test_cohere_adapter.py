"""Cohere v2 adapter: the adapter sends through the client production uses, over real sockets, to a
local server answering as Cohere does (`upstream.py`); each test asserts the exact JSON sent to
Cohere and the exact OpenAI-shaped body parsed back.

Fixtures `fixtures/cohere_*` follow Cohere's documented bodies: https://docs.cohere.com/reference/chat
(response), https://docs.cohere.com/docs/streaming and
https://docs.cohere.com/docs/tool-use-streaming (events, incl. parallel tool calls),
https://docs.cohere.com/reference/embed (embed by type).
"""

from __future__ import annotations

import base64
import json
import struct
import time
from pathlib import Path

import pytest

from kernel.errors import PROVIDER_ERROR_CLASSES, InvalidRequest, ProviderError
from providers.adapters import ADAPTERS
from providers.adapters.base import Target, Usage
from providers.adapters.cohere import CohereAdapter
from tests.providers.upstream import UPSTREAM, Route

FIXTURES = Path(__file__).parent / "fixtures"
CHAT_URL = f"{UPSTREAM.url}/v2/chat"
EMBED_URL = f"{UPSTREAM.url}/v2/embed"
SSE = {"content-type": "text/event-stream"}
COHERE = Target(
    provider_id=1,
    provider_name="co",
    wire_type="cohere",
    api_base=UPSTREAM.url,
    upstream_model="command-a-03-2025",
    api_key="co-test",
)
HELLO = [{"role": "user", "content": "Hello"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


def fixture_json(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sent_json(route: Route) -> dict:
    return json.loads(route.calls.last.request.content)


def without_created(body: dict) -> dict:
    assert abs(body["created"] - time.time()) < 60
    return {key: value for key, value in body.items() if key != "created"}


@pytest.fixture
def cohere(client):
    return CohereAdapter(client)


def test_registry_maps_cohere():
    assert ADAPTERS["cohere"] is CohereAdapter
    assert CohereAdapter.wire_type == "cohere"


# --- requests -------------------------------------------------------------------------------


async def test_request_translation(upstream, cohere):
    route = upstream.post(CHAT_URL).respond(200, json=fixture_json("cohere_chat.json"))
    call = {"id": "get_weather_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}
    payload = {
        "model": "alias",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky.jpg", "detail": "low"}},
            ], "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "get_weather_1", "content": "{\"temp\": 21}"},
        ],
        "max_completion_tokens": 300,
        "max_tokens": 50,
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "stop": ["END"],
        "tools": [WEATHER],
        "tool_choice": "required",
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        "n": 1,
        "parallel_tool_calls": True,
        # Dropped: no Cohere counterpart, and none changes what the client relies on.
        "user": "user-42",
        "logit_bias": {"50256": -100},
        "service_tier": "auto",
        "store": False,
    }

    await cohere.chat(payload, COHERE)

    assert sent_json(route) == {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "system", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky.jpg", "detail": "low"}},
            ]},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "get_weather_1", "content": "{\"temp\": 21}"},
        ],
        "temperature": 0.3,
        "p": 0.9,
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "max_tokens": 300,
        "stop_sequences": ["END"],
        "tools": [WEATHER],
        "tool_choice": "REQUIRED",
        "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
    }
    headers = route.calls.last.request.headers
    assert headers["authorization"] == "Bearer co-test"


async def test_minimal_request(upstream, cohere):
    route = upstream.post(CHAT_URL).respond(200, json=fixture_json("cohere_chat.json"))

    await cohere.chat({"model": "alias", "messages": HELLO}, COHERE)

    assert sent_json(route) == {"model": "command-a-03-2025", "messages": HELLO}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"stop": "\n\n"}, {"stop_sequences": ["\n\n"]}),
        ({"tool_choice": "none", "tools": [WEATHER]}, {"tools": [WEATHER], "tool_choice": "NONE"}),
        ({"tool_choice": "auto", "tools": [WEATHER]}, {"tools": [WEATHER]}),
        ({"tool_choice": "none"}, {}),
        ({"response_format": {"type": "json_object"}}, {"response_format": {"type": "json_object"}}),
        ({"response_format": {"type": "text"}}, {}),
        (
            {"tools": [{"type": "function", "function": {**WEATHER["function"], "strict": True}}]},
            {"tools": [WEATHER], "strict_tools": True},
        ),
        ({"stream": False}, {}),
        ({"messages": [{"role": "assistant", "content": "Hi", "tool_calls": []}]},
         {"messages": [{"role": "assistant", "content": "Hi"}]}),
    ],
)
async def test_parameter_translation(upstream, cohere, extra, expected):
    route = upstream.post(CHAT_URL).respond(200, json=fixture_json("cohere_chat.json"))

    await cohere.chat({"messages": HELLO, **extra}, COHERE)

    assert sent_json(route) == {"model": "command-a-03-2025", "messages": HELLO, **expected}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "tools": [WEATHER]},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"n": 2}, "n"),
        ({"functions": [WEATHER["function"]]}, "functions"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"parallel_tool_calls": False, "tools": [WEATHER]}, "parallel_tool_calls"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "1"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages"),
    ],
)
async def test_refuses_what_it_cannot_honour(upstream, cohere, extra, param):
    route = upstream.post(CHAT_URL).respond(200, json=fixture_json("cohere_chat.json"))

    with pytest.raises(InvalidRequest) as caught:
        await cohere.chat({"messages": HELLO, **extra}, COHERE)

    assert caught.value.param == param
    assert caught.value.status == 400
    assert not route.called


def test_specific_function_choice_says_what_to_do_instead(cohere):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    with pytest.raises(InvalidRequest, match="use 'tool_choice': 'required' with only that function"):
        cohere.chat_request({"messages": HELLO, "tools": [WEATHER], "tool_choice": choice}, COHERE)


# --- responses ------------------------------------------------------------------------------


async def test_text_response(upstream, cohere):
    upstream.post(CHAT_URL).respond(200, json=fixture_json("cohere_chat.json"))

    result = await cohere.chat({"messages": HELLO}, COHERE)

    assert without_created(result.body) == {
        "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
        "object": "chat.completion",
        "model": "command-a-03-2025",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "LLMs are neural networks trained on large amounts of text.",
                    "refusal": None,
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 17, "completion_tokens": 12, "total_tokens": 29},
    }
    # Billed units, not `tokens` (which counts Cohere's own prompt template).
    assert result.usage == Usage(prompt_tokens=17, completion_tokens=12)


async def test_tool_call_response(upstream, cohere):
    upstream.post(CHAT_URL).respond(200, json=fixture_json("cohere_chat_tool_call.json"))

    result = await cohere.chat({"messages": HELLO, "tools": [WEATHER]}, COHERE)

    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "get_weather_1byjy32y4hvq",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"},
            }
        ],
    }
    assert result.usage == Usage(prompt_tokens=37, completion_tokens=28)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length"), ("TOOL_CALL", "tool_calls")],
)
async def test_finish_reasons(upstream, cohere, reason, expected):
    upstream.post(CHAT_URL).respond(200, json={**fixture_json("cohere_chat.json"), "finish_reason": reason})

    result = await cohere.chat({"messages": HELLO}, COHERE)

    assert result.body["choices"][0]["finish_reason"] == expected


@pytest.mark.parametrize(("reason", "error_class"), [("ERROR", "upstream_server"), ("TIMEOUT", "timeout")])
async def test_failed_generation_is_an_upstream_error(upstream, cohere, reason, error_class):
    upstream.post(CHAT_URL).respond(200, json={**fixture_json("cohere_chat.json"), "finish_reason": reason})

    with pytest.raises(ProviderError) as caught:
        await cohere.chat({"messages": HELLO}, COHERE)

    assert caught.value.error_class == error_class
    assert caught.value.retryable is True
    assert caught.value.message == f"Provider 'co' failed: finish_reason {reason}"


async def test_usage_falls_back_to_tokens(upstream, cohere):
    body = {**fixture_json("cohere_chat.json"), "usage": {"tokens": {"input_tokens": 5, "output_tokens": 3}}}
    upstream.post(CHAT_URL).respond(200, json=body)

    result = await cohere.chat({"messages": HELLO}, COHERE)

    assert result.usage == Usage(prompt_tokens=5, completion_tokens=3)


async def test_response_without_message_is_malformed(upstream, cohere):
    upstream.post(CHAT_URL).respond(200, json={"id": "x", "finish_reason": "COMPLETE"})

    with pytest.raises(ProviderError) as caught:
        await cohere.chat({"messages": HELLO}, COHERE)

    assert caught.value.error_class == "upstream_server"


# --- streams --------------------------------------------------------------------------------


async def collect(cohere: CohereAdapter, payload: dict) -> list[dict]:
    return [chunk async for chunk in cohere.chat_stream(payload, COHERE)]


def envelope(message_id: str) -> dict:
    return {"id": message_id, "object": "chat.completion.chunk", "model": "command-a-03-2025"}


def chunk(message_id: str, delta: dict, finish_reason: str | None = None) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    return {**envelope(message_id), "choices": [choice]}


async def test_text_stream(upstream, cohere):
    route = upstream.post(CHAT_URL).respond(200, content=fixture_bytes("cohere_chat_stream.txt"), headers=SSE)

    chunks = await collect(cohere, {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}})

    assert sent_json(route) == {"model": "command-a-03-2025", "messages": HELLO, "stream": True}
    sid = "29f14a5a-11de-4cae-9800-25e4747408ea"
    assert [without_created(c) for c in chunks] == [
        chunk(sid, {"role": "assistant", "content": ""}),
        chunk(sid, {"content": "Hello"}),
        chunk(sid, {"content": "!"}),
        chunk(sid, {}, "stop"),
        {**envelope(sid), "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    ]


async def test_tool_call_stream_with_parallel_calls(upstream, cohere):
    upstream.post(CHAT_URL).respond(200, content=fixture_bytes("cohere_chat_stream_tools.txt"), headers=SSE)

    chunks = await collect(cohere, {"messages": HELLO, "tools": [WEATHER], "stream": True})

    sid = "fba98ad3-e5a1-413c-a8de-84fbf9baabf7"

    def start(index: int, call_id: str) -> dict:
        return {"index": index, "id": call_id, "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}

    def arguments(index: int, text: str) -> dict:
        return {"index": index, "function": {"arguments": text}}

    # The tool plan has no OpenAI counterpart and is not relayed.
    assert [without_created(c) for c in chunks] == [
        chunk(sid, {"role": "assistant", "content": ""}),
        chunk(sid, {"tool_calls": [start(0, "get_weather_p0dage9q1nv4")]}),
        chunk(sid, {"tool_calls": [arguments(0, "{\"location\":")]}),
        chunk(sid, {"tool_calls": [arguments(0, "\"Madrid\"}")]}),
        chunk(sid, {"tool_calls": [start(1, "get_weather_6bqg7fejq3zv")]}),
        chunk(sid, {"tool_calls": [arguments(1, "{\"location\":\"Brasilia\"}")]}),
        chunk(sid, {}, "tool_calls"),
        {**envelope(sid), "choices": [], "usage": {"prompt_tokens": 37, "completion_tokens": 28, "total_tokens": 65}},
    ]


async def test_stream_ending_with_error_raises_after_the_text(upstream, cohere):
    body = fixture_bytes("cohere_chat_stream.txt").replace(b'"COMPLETE"', b'"ERROR"')
    upstream.post(CHAT_URL).respond(200, content=body, headers=SSE)

    chunks = []
    with pytest.raises(ProviderError) as caught:
        async for piece in cohere.chat_stream({"messages": HELLO, "stream": True}, COHERE):
            chunks.append(piece)

    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hello", "!"]
    assert caught.value.error_class == "upstream_server"
    assert caught.value.message == "Provider 'co' failed mid-stream: finish_reason ERROR"


async def test_stream_cut_before_message_end_is_malformed(upstream, cohere):
    body = fixture_bytes("cohere_chat_stream.txt").split(b"event: message-end")[0]
    upstream.post(CHAT_URL).respond(200, content=body, headers=SSE)

    with pytest.raises(ProviderError) as caught:
        await collect(cohere, {"messages": HELLO, "stream": True})

    assert caught.value.error_class == "upstream_server"
    assert "ended before message-end" in caught.value.message


async def test_thinking_deltas_are_not_relayed(upstream, cohere):
    thinking = (
        b'event: content-delta\ndata: {"type":"content-delta","index":0,'
        b'"delta":{"message":{"content":{"thinking":"Let me see."}}}}\n\n'
    )
    body = fixture_bytes("cohere_chat_stream.txt").replace(b"event: content-end", thinking + b"event: content-end")
    upstream.post(CHAT_URL).respond(200, content=body, headers=SSE)

    chunks = await collect(cohere, {"messages": HELLO, "stream": True})

    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert texts == ["", "Hello", "!", None]


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "error_class"),
    [
        (400, "invalid request: message must be at least 1 token long", "bad_request"),
        (400, "too many tokens: total number of tokens in the prompt cannot exceed 4081 - received 4292.",
         "context_length_exceeded"),
        (400, "too many tokens: size limit exceeded by 11326 tokens.", "context_length_exceeded"),
        (400, ("too many tokens: max tokens must be less than or equal to 4096, the maximum output for "
               "this model - received 8192."), "bad_request"),
        (401, "invalid api token", "auth"),
        (402, "Please add or update your payment method.", "auth"),
        (403, "forbidden", "auth"),
        (404, "model 'x' not found", "bad_request"),
        (429, "You are past the per minute request limit, please wait and try again later.", "rate_limited"),
        (498, "invalid token", "auth"),
        (499, "request cancelled", "upstream_server"),
        (500, "internal server error, this has been reported to our developers", "upstream_server"),
        (503, "service unavailable", "overloaded"),
        (504, "gateway timeout", "timeout"),
    ],
)
async def test_error_mapping(upstream, cohere, status, message, error_class):
    body = {"id": "5e5ba0d5-0c0a-4c52-ab57-2d3b3e3a1a01", "message": message}
    upstream.post(CHAT_URL).respond(status, json=body, headers={"retry-after": "7"})

    with pytest.raises(ProviderError) as caught:
        await cohere.chat({"messages": HELLO}, COHERE)

    exc = caught.value
    assert exc.error_class == error_class
    assert (exc.status, exc.retryable) == PROVIDER_ERROR_CLASSES[error_class]
    assert exc.upstream_status == status
    assert exc.retry_after == 7.0
    assert exc.message == f"Provider 'co' returned {status}: {message}"


async def test_stream_status_error_raises_before_any_chunk(upstream, cohere):
    upstream.post(CHAT_URL).respond(429, json={"message": "slow down"})

    with pytest.raises(ProviderError) as caught:
        await collect(cohere, {"messages": HELLO, "stream": True})

    assert caught.value.error_class == "rate_limited"


# --- embeddings -----------------------------------------------------------------------------


async def test_embeddings(upstream, cohere):
    route = upstream.post(EMBED_URL).respond(200, json=fixture_json("cohere_embed.json"))
    embed = Target(**{**COHERE.__dict__, "upstream_model": "embed-v4.0"})

    result = await cohere.embeddings({"model": "alias", "input": ["hello", "goodbye"], "dimensions": 1024}, embed)

    assert sent_json(route) == {
        "model": "embed-v4.0",
        "texts": ["hello", "goodbye"],
        "input_type": "search_document",
        "embedding_types": ["float"],
        "output_dimension": 1024,
    }
    assert route.calls.last.request.headers["authorization"] == "Bearer co-test"
    assert result.body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.016296387, -0.008354187, -0.04699707]},
            {"object": "embedding", "index": 1, "embedding": [-0.0025005341, 0.032836914, 0.04559326]},
        ],
        "model": "embed-v4.0",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    assert result.usage == Usage(prompt_tokens=2, completion_tokens=0)


async def test_embeddings_single_string_and_base64(upstream, cohere):
    route = upstream.post(EMBED_URL).respond(200, json=fixture_json("cohere_embed.json"))

    result = await cohere.embeddings({"model": "alias", "input": "hello", "encoding_format": "base64"}, COHERE)

    assert sent_json(route)["texts"] == ["hello"]
    assert "output_dimension" not in sent_json(route)
    first = result.body["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(first)) == pytest.approx([0.016296387, -0.008354187, -0.04699707])


@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2], [3]]])
async def test_embeddings_refuse_token_ids(upstream, cohere, value):
    route = upstream.post(EMBED_URL).respond(200, json=fixture_json("cohere_embed.json"))

    with pytest.raises(InvalidRequest) as caught:
        await cohere.embeddings({"model": "alias", "input": value}, COHERE)

    assert caught.value.param == "input"
    assert not route.called


async def test_embeddings_refuse_more_than_cohere_takes(upstream, cohere):
    with pytest.raises(InvalidRequest, match="at most 96"):
        await cohere.embeddings({"model": "alias", "input": ["x"] * 97}, COHERE)
