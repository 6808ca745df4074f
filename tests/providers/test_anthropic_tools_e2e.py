"""Tools and structured output on an Anthropic provider, end to end.

The gateway's API in process (Django's async client) in front of the real fake provider process,
whose Anthropic dialect answers tool use the way the Messages API does and checks that every
tool_use is answered by a tool_result. The client side follows the openai SDK's tool flow: send
tools, run the returned calls, send the assistant message back with one `tool` message per call;
streamed chunks are accumulated with the SDK's own `ChatCompletionStreamState`.
"""

from __future__ import annotations

import json

import pytest

try:
    import jsonschema
except ImportError:  # not installed everywhere; `schema_errors` then checks by hand
    jsonschema = None
from tests.asgi_client import ApiClient
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from accounting.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-haiku-4-5"
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "unit"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": WEATHER_PARAMETERS,
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
QUESTION = "What's the weather in Paris?"
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number"},
        "sources": {"type": "array", "items": {"type": "string"}},
        "final": {"type": "boolean"},
        "mood": {"type": "string", "enum": ["calm", "stormy"]},
    },
    "required": ["answer", "confidence", "sources", "final", "mood"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True},
}


async def post(gateway, **body):
    return await ApiClient().post(
        "/v1/chat/completions", json.dumps({"model": MODEL, **body}),
        content_type="application/json", headers=gateway.auth,
    )


async def chat(gateway, **body) -> dict:
    response = await post(gateway, **body)
    assert response.status_code == 200, response.content
    return response.json()


async def chat_stream(gateway, **body) -> list[dict]:
    response = await post(gateway, stream=True, **body)
    assert response.status_code == 200, response.content
    raw = response.content.decode()
    events = [block[len("data: "):] for block in raw.split("\n\n") if block.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def accumulate(chunks: list[dict]) -> ChatCompletion:
    """Join chunks the way the openai SDK does (`client.chat.completions.stream`)."""
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


def schema_errors(value: object, schema: dict) -> list[str]:
    """What makes `value` fail `schema`: jsonschema's verdict, or a hand check without it."""
    if jsonschema is not None:
        return [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(value)]
    return _hand_check(value, schema, "$")


_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool, "integer": int,
    "number": (int, float),
}


def _hand_check(value: object, schema: dict, where: str) -> list[str]:
    """Types, enums, required keys and extra keys: all the schemas here use."""
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in {schema['enum']}"]
    kind = schema.get("type")
    numeric_bool = kind in ("integer", "number") and isinstance(value, bool)
    if kind and (not isinstance(value, _TYPES[kind]) or numeric_bool):
        return [f"{where}: {value!r} is not {kind}"]
    if kind == "array":
        items = schema.get("items", {})
        return [e for i, item in enumerate(value) for e in _hand_check(item, items, f"{where}[{i}]")]
    if kind != "object":
        return []
    properties = schema.get("properties", {})
    errors = [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
    if schema.get("additionalProperties") is False:
        errors += [f"{where}: unexpected {key!r}" for key in value if key not in properties]
    for key, sub in properties.items():
        if key in value:
            errors += _hand_check(value[key], sub, f"{where}.{key}")
    return errors


def tool_messages(message: dict) -> list[dict]:
    """What the client sends back: the assistant message as received, then one result per call."""
    result = json.dumps({"temperature": 18, "sky": "clear"})
    results = [{"role": "tool", "tool_call_id": call["id"], "content": result} for call in message["tool_calls"]]
    return [message, *results]


async def records() -> list[UsageRecord]:
    return [record async for record in UsageRecord.objects.order_by("created_at")]


# --- tools ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "tool_choice"),
    [
        (f"{QUESTION} [[fake tool=get_weather]]", "auto"),
        (QUESTION, "required"),
        (QUESTION, {"type": "function", "function": {"name": "get_weather"}}),
    ],
    ids=["model-chooses", "required", "named"],
)
async def test_tool_call_round_trip(gateway, question, tool_choice):
    messages = [{"role": "user", "content": question}]

    first = await chat(gateway, messages=messages, tools=[WEATHER, CLOCK], tool_choice=tool_choice)

    ChatCompletion.model_validate(first)
    [choice] = first["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("toolu_")
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert schema_errors(arguments, WEATHER_PARAMETERS) == []

    # The fake refuses a history whose tool_use is not answered by a tool_result right after it.
    messages += tool_messages(choice["message"])
    final = await chat(gateway, messages=messages, tools=[WEATHER, CLOCK])

    [choice] = final["choices"]
    assert choice["finish_reason"] == "stop"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"].strip()
    assert "tool_calls" not in choice["message"]
    assert [(r.provider_name, r.status) for r in await records()] == [("fake-anthropic", "success")] * 2


async def test_streamed_tool_call_round_trip(gateway):
    messages = [{"role": "user", "content": f"{QUESTION} [[fake tool=get_weather chunks=5]]"}]

    chunks = await chat_stream(gateway, messages=messages, tools=[WEATHER])

    choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    opening, *pieces = [c["delta"]["tool_calls"][0] for c in choices if c["delta"].get("tool_calls")]
    assert opening["index"] == 0 and opening["type"] == "function"
    assert opening["function"] == {"name": "get_weather", "arguments": ""}
    assert len(pieces) == 5 and all(set(piece) == {"index", "function"} for piece in pieces)
    completion = accumulate(chunks)
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id == opening["id"] and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert schema_errors(arguments, WEATHER_PARAMETERS) == []

    # Sent back as the openai SDK's accumulated message would be.
    sent_call = call.model_dump(include={"id", "type", "function"})
    assistant = {"role": "assistant", "content": None, "tool_calls": [sent_call]}
    messages += tool_messages(assistant)
    final = accumulate(await chat_stream(gateway, messages=messages, tools=[WEATHER]))

    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content.strip()
    assert not final.choices[0].message.tool_calls


async def test_tool_choice_none_answers_with_text(gateway):
    messages = [{"role": "user", "content": f"{QUESTION} [[fake tool=get_weather]]"}]

    body = await chat(gateway, messages=messages, tools=[WEATHER], tool_choice="none")

    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"]


async def test_invalid_tool_call_arguments_are_400_naming_the_message(gateway):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]

    response = await post(gateway, messages=messages, tools=[WEATHER])

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[1].tool_calls[0].function.arguments"


# --- structured output ------------------------------------------------------------------------


async def test_json_schema_answer_is_json_content_matching_the_schema(gateway):
    body = await chat(gateway, messages=[{"role": "user", "content": "Is it sunny?"}],
                      response_format=JSON_SCHEMA)

    ChatCompletion.model_validate(body)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]
    assert schema_errors(json.loads(choice["message"]["content"]), VERDICT_SCHEMA) == []


async def test_json_schema_stream_is_json_content_matching_the_schema(gateway):
    chunks = await chat_stream(
        gateway, messages=[{"role": "user", "content": "Is it sunny?"}],
        response_format=JSON_SCHEMA, stream_options={"include_usage": True},
    )

    completion = accumulate(chunks)
    assert completion.choices[0].finish_reason == "stop"
    assert not completion.choices[0].message.tool_calls
    assert schema_errors(json.loads(completion.choices[0].message.content), VERDICT_SCHEMA) == []
    assert completion.usage.completion_tokens > 0


async def test_json_object_answer_is_a_json_object(gateway):
    body = await chat(gateway, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                      response_format={"type": "json_object"})

    assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_tools_with_json_schema_is_400_naming_response_format(gateway):
    messages = [{"role": "user", "content": QUESTION}]

    response = await post(gateway, messages=messages, tools=[WEATHER], response_format=JSON_SCHEMA)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format"
    assert "forcing a tool" in error["message"]
