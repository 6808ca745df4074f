"""Gemini adapter wire tests: the adapter sends through the client production uses, over real
sockets, to a local server answering as Gemini does (`upstream.py`); each test asserts the exact
JSON sent upstream and the exact OpenAI-shaped body parsed back.

Fixtures under `fixtures/gemini_*` follow Google's documented bodies:
https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse (plain and `alt=sse`
streams, CRLF-separated as Google sends them), https://ai.google.dev/gemini-api/docs/function-calling,
https://ai.google.dev/api/embeddings and https://ai.google.dev/gemini-api/docs/troubleshooting.
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
from providers.adapters.gemini import GeminiAdapter
from tests.providers.upstream import UPSTREAM, Reply, Route

FIXTURES = Path(__file__).parent / "fixtures"
BASE = f"{UPSTREAM.url}/v1beta/models"
GENERATE_URL = f"{BASE}/gemini-2.5-flash:generateContent"
STREAM_URL = f"{BASE}/gemini-2.5-flash:streamGenerateContent?alt=sse"
SSE = {"content-type": "text/event-stream"}
GEMINI = Target(
    provider_id=1,
    provider_name="g",
    wire_type="gemini",
    api_base=UPSTREAM.url,
    upstream_model="gemini-2.5-flash",
    api_key="AIza-test",
)
HELLO = [{"role": "user", "content": "Hello"}]
HELLO_CONTENTS = [{"role": "user", "parts": [{"text": "Hello"}]}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
SIGNATURE = "CiQB0e2Kb7sQ5kZp3mVnRcY9/Q=="


def fixture_json(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sent_json(route: Route) -> dict:
    return json.loads(route.calls.last.request.content)


def without_created(body: dict) -> dict:
    assert abs(body["created"] - time.time()) < 60
    return {key: value for key, value in body.items() if key != "created"}


ANSWER = fixture_json("gemini_generate_content.json")
CALLS = fixture_json("gemini_function_call.json")


@pytest.fixture
def gemini(client):
    return GeminiAdapter(client)


def test_registry_maps_gemini():
    assert ADAPTERS["gemini"] is GeminiAdapter
    assert GeminiAdapter.wire_type == "gemini"
    assert GeminiAdapter.supports_embeddings


# --- requests -------------------------------------------------------------------------------


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image_url(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "high"}}


async def test_request_translation(upstream, gemini):
    route = upstream.post(GENERATE_URL).respond(200, json=ANSWER)
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
                    image_url("https://example.com/photos/cat.jpg?size=large"),
                    image_url("https://example.com/render"),
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBER",
                                              "filename": "a.pdf"}},
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
        "n": 2,
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": -0.2,
        "response_format": {"type": "text"},
        # Dropped: no Gemini counterpart, and none changes what the client relies on.
        "user": "user-42",
        "logit_bias": {"50256": -100},
        "parallel_tool_calls": False,
        "service_tier": "auto",
        "store": False,
        "reasoning_effort": "low",
        "stream_options": {"include_usage": True},
    }

    await gemini.chat(payload, GEMINI)

    assert sent_json(route) == {
        "systemInstruction": {"parts": [{"text": "You are terse.\n\nAnswer in French."}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is in these pictures?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    {"fileData": {"fileUri": "https://example.com/photos/cat.jpg?size=large",
                                  "mimeType": "image/jpeg"}},
                    {"fileData": {"fileUri": "https://example.com/render"}},
                    {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                    {"inlineData": {"mimeType": "application/pdf", "data": "JVBER"}},
                ],
            },
            {"role": "model", "parts": [{"text": "Un chat."}]},
            {"role": "user", "parts": [{"text": "Et la couleur ?"}]},
        ],
        "generationConfig": {
            "temperature": 0.5,
            "topP": 0.9,
            "candidateCount": 2,
            "seed": 7,
            "presencePenalty": 0.1,
            "frequencyPenalty": -0.2,
            "maxOutputTokens": 300,
            "stopSequences": ["\n\nHuman:"],
        },
    }


async def test_url_and_headers(upstream, gemini):
    route = upstream.post(GENERATE_URL).respond(200, json=ANSWER)
    prefixed = Target(**{**GEMINI.__dict__, "upstream_model": "models/gemini-2.5-flash",
                         "api_base": f"{UPSTREAM.url}/"})

    await gemini.chat({"model": "alias", "messages": HELLO}, prefixed)

    headers = route.calls.last.request.headers
    assert headers["x-goog-api-key"] == "AIza-test"
    assert "authorization" not in headers
    assert sent_json(route) == {"contents": HELLO_CONTENTS}


@pytest.mark.parametrize(
    ("response_format", "config"),
    [
        ({"type": "json_object"}, {"responseMimeType": "application/json"}),
        (
            {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
                "type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": False}}},
            {"responseMimeType": "application/json", "responseJsonSchema": {
                "type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": False}},
        ),
    ],
)
async def test_structured_output(upstream, gemini, response_format, config):
    route = upstream.post(GENERATE_URL).respond(200, json=ANSWER)

    await gemini.chat({"messages": HELLO, "response_format": response_format}, GEMINI)

    assert sent_json(route) == {"contents": HELLO_CONTENTS, "generationConfig": config}


@pytest.mark.parametrize(
    ("tool_choice", "config"),
    [
        (None, None),
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "get_weather"}},
         {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
    ],
)
async def test_tools_and_tool_choice(upstream, gemini, tool_choice, config):
    route = upstream.post(GENERATE_URL).respond(200, json=CALLS)
    bare = {"type": "function", "function": {"name": "now"}}
    payload = {"messages": HELLO, "tools": [WEATHER_TOOL, bare]}
    if tool_choice is not None:
        payload["tool_choice"] = tool_choice

    await gemini.chat(payload, GEMINI)

    expected = {
        "contents": HELLO_CONTENTS,
        "tools": [{"functionDeclarations": [
            {
                "name": "get_weather",
                "description": "Current weather in a city.",
                "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
            },
            {"name": "now"},
        ]}],
    }
    if config is not None:
        expected["toolConfig"] = {"functionCallingConfig": config}
    assert sent_json(route) == expected


async def test_tool_round_trip_history(upstream, gemini):
    """Assistant tool calls become functionCall parts (with their thought signature), and tool
    results functionResponse parts in one user turn, named after the call with the same id."""
    route = upstream.post(GENERATE_URL).respond(200, json=ANSWER)
    payload = {
        "messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_fn1_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                     "extra_content": {"google": {"thought_signature": SIGNATURE}}},
                    {"id": "call_fn1_2", "type": "function",
                     "function": {"name": "get_time", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_fn1_1", "content": '{"temp_c": 21}'},
            {"role": "tool", "tool_call_id": "call_fn1_2", "content": [text("14:05")]},
            {"role": "user", "content": "Thanks!"},
        ],
        "tools": [WEATHER_TOOL],
    }

    await gemini.chat(payload, GEMINI)

    assert sent_json(route)["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}},
             "thoughtSignature": SIGNATURE},
            {"functionCall": {"name": "get_time", "args": {}}},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
            {"functionResponse": {"name": "get_time", "response": {"output": "14:05"}}},
            {"text": "Thanks!"},
        ]},
    ]


async def test_stream_request_goes_to_stream_url(upstream, gemini):
    route = upstream.post(STREAM_URL).respond(200, content=fixture_bytes("gemini_stream.txt"),
                                              headers=SSE)

    [_ async for _ in gemini.chat_stream({"messages": HELLO, "stream": True}, GEMINI)]

    assert route.called
    assert sent_json(route) == {"contents": HELLO_CONTENTS}


TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format.json_schema.schema"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [*HELLO, {"role": "tool", "tool_call_id": "nope", "content": "1"}]},
         "messages"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {**TOOL_CALL, "function": {"name": "f", "arguments": "[1, 2]"}}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
         "messages"),
        ({"messages": [{"role": "user", "content": [image_url("ftp://x/y.png")]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [image_url("data:image/png,raw")]}]},
         "messages"),
    ],
)
async def test_refuses_what_it_cannot_honour(upstream, gemini, extra, param):
    route = upstream.post(GENERATE_URL).respond(200, json=ANSWER)

    with pytest.raises(InvalidRequest) as caught:
        await gemini.chat({"messages": HELLO, **extra}, GEMINI)

    assert caught.value.param == param
    assert caught.value.status == 400
    assert not route.called


# --- responses ------------------------------------------------------------------------------


async def test_response_translation(upstream, gemini):
    upstream.post(GENERATE_URL).respond(200, json=fixture_json("gemini_generate_content.json"))

    result = await gemini.chat({"messages": HELLO}, GEMINI)

    usage = {"prompt_tokens": 1210, "completion_tokens": 60, "total_tokens": 1270,
             "prompt_tokens_details": {"cached_tokens": 1024}}
    assert without_created(result.body) == {
        "id": "mAitaJ3BIaqvz7IPg7mp8Q4",
        "object": "chat.completion",
        "model": "gemini-2.5-flash",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "The sky looks blue because air scatters short blue wavelengths more "
                           "than red ones.",
                "refusal": None,
            },
            "finish_reason": "stop",
            "logprobs": None,
        }],
        "usage": usage,
    }
    # Thinking tokens are billed as output; the cached part is inside the prompt count.
    assert result.usage == Usage(prompt_tokens=1210, completion_tokens=60, cached_tokens=1024)


async def test_function_call_response(upstream, gemini):
    upstream.post(GENERATE_URL).respond(200, json=fixture_json("gemini_function_call.json"))

    result = await gemini.chat({"messages": HELLO, "tools": [WEATHER_TOOL]}, GEMINI)

    [choice] = result.body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {"id": "call_fn1_1", "type": "function",
             "function": {"name": "get_weather",
                          "arguments": '{"location": "Paris", "unit": "celsius"}'},
             "extra_content": {"google": {"thought_signature": SIGNATURE}}},
            {"id": "call_fn1_2", "type": "function",
             "function": {"name": "get_time", "arguments": '{"timezone": "Europe/Paris"}'}},
        ],
    }
    assert result.usage == Usage(prompt_tokens=74, completion_tokens=30)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
     ("RECITATION", "content_filter"), ("BLOCKLIST", "content_filter"),
     ("PROHIBITED_CONTENT", "content_filter"), ("OTHER", "stop")],
)
async def test_finish_reasons(upstream, gemini, reason, finish):
    body = fixture_json("gemini_generate_content.json")
    body["candidates"][0]["finishReason"] = reason
    upstream.post(GENERATE_URL).respond(200, json=body)

    result = await gemini.chat({"messages": HELLO}, GEMINI)

    assert result.body["choices"][0]["finish_reason"] == finish


async def test_blocked_prompt_is_content_filtered(upstream, gemini):
    upstream.post(GENERATE_URL).respond(200, json=fixture_json("gemini_prompt_blocked.json"))

    with pytest.raises(ProviderError) as caught:
        await gemini.chat({"messages": HELLO}, GEMINI)

    assert caught.value.error_class == "content_filtered"
    assert caught.value.status == 400 and not caught.value.retryable
    assert caught.value.message == "Provider 'g' blocked the prompt (blockReason SAFETY)."


async def test_response_without_candidates_is_malformed(upstream, gemini):
    upstream.post(GENERATE_URL).respond(200, json={"modelVersion": "gemini-2.5-flash"})

    with pytest.raises(ProviderError) as caught:
        await gemini.chat({"messages": HELLO}, GEMINI)

    assert caught.value.error_class == "upstream_server"


# --- streams --------------------------------------------------------------------------------


async def stream(gemini: GeminiAdapter, payload: dict) -> list[dict]:
    return [chunk async for chunk in gemini.chat_stream(payload, GEMINI)]


def envelope(response_id: str, model: str) -> dict:
    return {"id": response_id, "object": "chat.completion.chunk", "model": model}


async def test_stream_translation(upstream, gemini):
    upstream.post(STREAM_URL).respond(200, content=fixture_bytes("gemini_stream.txt"), headers=SSE)

    chunks = await stream(gemini, {"messages": HELLO, "stream": True})

    head = envelope("Y0WtaO3BFJ2qz7IP5c6VuAY", "gemini-2.5-flash")

    def choice(delta: dict, finish: str | None = None) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                     "logprobs": None}]}

    # Each event's running usage rides on the last chunk it produced, as `usage_so_far`.
    assert [without_created(chunk) for chunk in chunks] == [
        choice({"role": "assistant", "content": ""}),
        {**choice({"content": "The sky"}), "usage_so_far": {"prompt_tokens": 9, "completion_tokens": 2}},
        {**choice({"content": " is blue."}), "usage_so_far": {"prompt_tokens": 9, "completion_tokens": 5}},
        {**choice({}, "stop"), "usage_so_far": {"prompt_tokens": 9, "completion_tokens": 22}},
        # The last event's usage is the total; thinking counts as output.
        {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 22,
                                          "total_tokens": 31}},
    ]
    assert len({chunk["created"] for chunk in chunks}) == 1


async def test_stream_usage_before_the_first_candidate_tokens(upstream, gemini):
    """An event may count the prompt alone (no candidatesTokenCount yet), and one may carry only
    usageMetadata (Gemini 3): each side is passed on as reported, on a chunk of its own if need be."""
    head = {"modelVersion": "gemini-3-flash-preview", "responseId": "r1"}
    events = [
        {"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "index": 0}],
         "usageMetadata": {"promptTokenCount": 7, "cachedContentTokenCount": 4, "totalTokenCount": 7}},
        {"usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, "thoughtsTokenCount": 2,
                           "totalTokenCount": 12}},
        {"candidates": [{"content": {"parts": [{"text": "!"}], "role": "model"}, "index": 0,
                         "finishReason": "STOP"}]},
    ]
    body = b"".join(b"data: " + json.dumps({**e, **head}).encode() + b"\r\n\r\n" for e in events)
    upstream.post(STREAM_URL).respond(200, content=body, headers=SSE)

    chunks = await stream(gemini, {"messages": HELLO, "stream": True})

    assert [(chunk["choices"], chunk.get("usage_so_far")) for chunk in chunks[1:4]] == [
        ([{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None, "logprobs": None}],
         {"prompt_tokens": 7, "prompt_tokens_details": {"cached_tokens": 4}}),
        ([], {"prompt_tokens": 7, "completion_tokens": 5}),
        ([{"index": 0, "delta": {"content": "!"}, "finish_reason": None, "logprobs": None}], None),
    ]
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


async def test_stream_tool_calls(upstream, gemini):
    upstream.post(f"{BASE}/gemini-2.5-flash:streamGenerateContent?alt=sse").respond(
        200, content=fixture_bytes("gemini_function_call_stream.txt"), headers=SSE)

    chunks = await stream(gemini, {"messages": HELLO, "stream": True, "tools": [WEATHER_TOOL]})

    deltas = [(chunk["choices"][0]["delta"], chunk["choices"][0]["finish_reason"])
              for chunk in chunks[:-1]]
    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Let me check."}, None),
        ({"tool_calls": [{"index": 0, "id": "call_fs1_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                          "extra_content": {"google": {"thought_signature": SIGNATURE}}}]}, None),
        ({"tool_calls": [{"index": 1, "id": "call_fs1_2", "type": "function",
                          "function": {"name": "get_time", "arguments": "{}"}}]}, None),
        ({}, "tool_calls"),
    ]
    assert chunks[-1]["usage"] == {"prompt_tokens": 74, "completion_tokens": 30,
                                   "total_tokens": 104}


async def test_stream_without_usage_sends_no_usage_chunk(upstream, gemini):
    events = [json.loads(line[len("data: "):]) for line in
              fixture_bytes("gemini_stream.txt").decode().split("\r\n\r\n") if line]
    body = b"".join(b"data: " + json.dumps({k: v for k, v in event.items()
                                            if k != "usageMetadata"}).encode() + b"\r\n\r\n"
                    for event in events)
    upstream.post(STREAM_URL).respond(200, content=body, headers=SSE)

    chunks = await stream(gemini, {"messages": HELLO, "stream": True})

    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in chunks)


async def test_stream_error_event_mid_stream(upstream, gemini):
    first = fixture_bytes("gemini_stream.txt").split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    upstream.post(STREAM_URL).respond(
        200, content=first + b"data: " + json.dumps(error).encode() + b"\r\n\r\n", headers=SSE)

    chunks = []
    with pytest.raises(ProviderError) as caught:
        async for chunk in gemini.chat_stream({"messages": HELLO, "stream": True}, GEMINI):
            chunks.append(chunk)

    assert len(chunks) == 2  # the role chunk and the first text
    assert caught.value.error_class == "overloaded"
    assert caught.value.message == "Provider 'g' failed mid-stream: The model is overloaded."


async def test_stream_ending_before_a_finish_reason_is_malformed(upstream, gemini):
    first = fixture_bytes("gemini_stream.txt").split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    upstream.post(STREAM_URL).respond(200, content=first, headers=SSE)

    with pytest.raises(ProviderError) as caught:
        await stream(gemini, {"messages": HELLO, "stream": True})

    assert caught.value.error_class == "upstream_server"
    assert "ended before a finishReason" in caught.value.message


async def test_stream_with_blocked_prompt_fails_before_any_chunk(upstream, gemini):
    blocked = json.dumps(fixture_json("gemini_prompt_blocked.json")).encode()
    upstream.post(STREAM_URL).respond(200, content=b"data: " + blocked + b"\r\n\r\n", headers=SSE)

    stream_iter = gemini.chat_stream({"messages": HELLO, "stream": True}, GEMINI)
    with pytest.raises(ProviderError) as caught:
        await anext(stream_iter)

    assert caught.value.error_class == "content_filtered"


# --- errors ---------------------------------------------------------------------------------


def google_error(code: int, status: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}


@pytest.mark.parametrize(
    ("code", "status", "message", "error_class"),
    [
        (400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "bad_request"),
        (400, "INVALID_ARGUMENT",
         "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).",
         "context_length_exceeded"),
        (400, "FAILED_PRECONDITION", "User location is not supported for the API use.", "auth"),
        (403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.", "auth"),
        (401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", "auth"),
        (404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta.", "bad_request"),
        (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", "rate_limited"),
        (500, "INTERNAL", "An internal error has occurred.", "upstream_server"),
        (503, "UNAVAILABLE", "The model is overloaded. Please try again later.", "overloaded"),
        (504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete.", "timeout"),
    ],
)
async def test_error_mapping(upstream, gemini, code, status, message, error_class):
    upstream.post(GENERATE_URL).respond(code, json=google_error(code, status, message))

    with pytest.raises(ProviderError) as caught:
        await gemini.chat({"messages": HELLO}, GEMINI)

    exc = caught.value
    assert exc.error_class == error_class
    assert (exc.status, exc.retryable) == PROVIDER_ERROR_CLASSES[error_class]
    assert exc.upstream_status == code
    assert exc.retry_after is None
    assert exc.message == f"Provider 'g' returned {code}: {message}"


async def test_rate_limit_retry_delay_comes_from_retry_info(upstream, gemini):
    upstream.post(GENERATE_URL).respond(429, json=fixture_json("gemini_error_rate_limit.json"))

    with pytest.raises(ProviderError) as caught:
        await gemini.chat({"messages": HELLO}, GEMINI)

    assert caught.value.error_class == "rate_limited"
    assert caught.value.retry_after == 37.0
    assert caught.value.headers == {"retry-after": "37"}


async def test_retry_after_header_wins_over_retry_info(upstream, gemini):
    upstream.post(GENERATE_URL).respond(
        429, json=fixture_json("gemini_error_rate_limit.json"), headers={"retry-after": "5"})

    with pytest.raises(ProviderError) as caught:
        await gemini.chat({"messages": HELLO}, GEMINI)

    assert caught.value.retry_after == 5.0


async def test_invalid_api_key_is_auth_despite_invalid_argument(upstream, gemini):
    upstream.post(GENERATE_URL).respond(400, json=fixture_json("gemini_error_api_key.json"))

    with pytest.raises(ProviderError) as caught:
        await gemini.chat({"messages": HELLO}, GEMINI)

    assert caught.value.error_class == "auth"
    assert caught.value.status == 502


async def test_error_wrapped_in_an_array_and_plain_text_errors(upstream, gemini):
    wrapped = [google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")]
    upstream.post(GENERATE_URL).respond_in_turn(
        Reply.of(429, json=wrapped), Reply.of(502, text="<html>Bad Gateway</html>"))

    with pytest.raises(ProviderError) as first:
        await gemini.chat({"messages": HELLO}, GEMINI)
    with pytest.raises(ProviderError) as second:
        await gemini.chat({"messages": HELLO}, GEMINI)

    assert first.value.error_class == "rate_limited"
    assert first.value.message == "Provider 'g' returned 429: Quota exceeded."
    assert second.value.error_class == "upstream_server"


# --- embeddings -----------------------------------------------------------------------------

EMBED_URL = f"{BASE}/gemini-embedding-001:embedContent"
BATCH_URL = f"{BASE}/gemini-embedding-001:batchEmbedContents"
EMBEDDER = Target(**{**GEMINI.__dict__, "upstream_model": "gemini-embedding-001"})


async def test_one_input_uses_embed_content(upstream, gemini):
    route = upstream.post(EMBED_URL).respond(200, json=fixture_json("gemini_embed_content.json"))

    result = await gemini.embeddings({"model": "alias", "input": "hello world"}, EMBEDDER)

    assert sent_json(route) == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "hello world"}]},
    }
    assert route.calls.last.request.headers["x-goog-api-key"] == "AIza-test"
    assert result.body == {
        "object": "list",
        "model": "gemini-embedding-001",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0123, -0.0456, 0.0789, 0.5]}],
    }
    assert result.usage is None  # Gemini reports none: the gateway estimates and marks it


async def test_several_inputs_use_batch_embed_contents(upstream, gemini):
    route = upstream.post(BATCH_URL).respond(
        200, json=fixture_json("gemini_batch_embed_contents.json"))

    result = await gemini.embeddings({"input": ["a", "b"], "dimensions": 4}, EMBEDDER)

    model = "models/gemini-embedding-001"
    assert sent_json(route) == {"requests": [
        {"model": model, "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4},
        {"model": model, "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 4},
    ]}
    assert [item["index"] for item in result.body["data"]] == [0, 1]
    assert result.body["data"][1]["embedding"] == [-0.25, 0.125, 0.0625, -0.5]


async def test_base64_embeddings_are_little_endian_float32(upstream, gemini):
    upstream.post(BATCH_URL).respond(200, json=fixture_json("gemini_batch_embed_contents.json"))

    result = await gemini.embeddings({"input": ["a", "b"], "encoding_format": "base64"}, EMBEDDER)

    encoded = result.body["data"][1]["embedding"]
    assert isinstance(encoded, str)
    assert list(struct.unpack("<4f", base64.b64decode(encoded))) == [-0.25, 0.125, 0.0625, -0.5]


@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2], [3]], [""][:0]])
async def test_token_inputs_are_refused(upstream, gemini, value):
    with pytest.raises(InvalidRequest) as caught:
        await gemini.embeddings({"input": value}, EMBEDDER)

    assert caught.value.param == "input"
    assert not upstream.calls


async def test_embeddings_without_vectors_are_malformed(upstream, gemini):
    upstream.post(EMBED_URL).respond(200, json={"embedding": {}})

    with pytest.raises(ProviderError) as caught:
        await gemini.embeddings({"input": "a"}, EMBEDDER)

    assert caught.value.error_class == "upstream_server"
