"""OpenAI's own validation of tools, tool_choice, response_format, parallel_tool_calls, seed and
logit_bias, before routing (`routing/validation.py`): the same 400, with OpenAI's param and code,
whichever provider is behind, and before the model is even looked up."""

from __future__ import annotations

import json

import pytest

from tests.routing.test_chat_api import post, records

pytestmark = pytest.mark.django_db(transaction=True)

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}

CASES = [
    # tools
    ({"tools": {"type": "function"}}, "tools", "invalid_type"),
    ({"tools": ["get_weather"]}, "tools[0]", "invalid_type"),
    ({"tools": [{"function": {"name": "f"}}]}, "tools[0].type", "missing_required_parameter"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "invalid_value"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
    ({"tools": [TOOL, {"type": "function", "function": {}}]}, "tools[1].function.name", "missing_required_parameter"),
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": 7}}]}, "tools[0].function.name", "invalid_type"),
    ({"tools": [{"type": "function", "function": {"name": "f" * 65}}]}, "tools[0].function.name",
     "string_above_max_length"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "tools[0].function.parameters", "invalid_type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters", "invalid_function_parameters"),
    # tool_choice
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"tools": [TOOL], "tool_choice": 1}, "tool_choice", "invalid_type"),
    ({"tools": [TOOL], "tool_choice": {"function": {"name": "get_weather"}}}, "tool_choice.type",
     "missing_required_parameter"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice.function.name", "invalid_value"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice", "invalid_value"),
    # response_format
    ({"response_format": "json"}, "response_format", "invalid_type"),
    ({"response_format": {}}, "response_format.type", "missing_required_parameter"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "missing_required_parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format.json_schema.name", "missing_required_parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}},
     "response_format.json_schema.name", "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "answer"}}},
     "response_format.json_schema.schema", "missing_required_parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": []}}},
     "response_format.json_schema.schema", "invalid_type"),
    # the typed ones
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type"),
    ({"seed": "42"}, "seed", "invalid_type"),
    ({"seed": 1.5}, "seed", "invalid_type"),
    ({"logit_bias": [1]}, "logit_bias", "invalid_type"),
    ({"logit_bias": {"hello": 1}}, "logit_bias", "invalid_value"),
    ({"logit_bias": {"-5": 1}}, "logit_bias", "invalid_value"),
    ({"logit_bias": {"50256": "high"}}, "logit_bias.50256", "invalid_type"),
    ({"logit_bias": {"50256": -101}}, "logit_bias.50256", "invalid_value"),
]


@pytest.mark.parametrize(("extra", "param", "code"), CASES)
async def test_openais_400_whichever_provider_and_before_routing(gateway, extra, param, code):
    models = ["gpt-4o-mini", "claude-haiku-4-5", "no-such-model"]  # the last: refused before routing
    for model in models:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}
        response = await post(gateway, "/v1/chat/completions", json.dumps(body))
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
        assert error["message"]
    assert [(r.status, r.http_status) for r in await records()] == [("error", 400)] * len(models)


async def test_openais_messages_as_openai_words_them(gateway):
    cases = [
        ({"response_format": {"type": "xml"}},
         "Invalid value: 'xml'. Supported values are: 'json_object', 'json_schema', and 'text'."),
        ({"tools": [{"type": "function"}]}, "Missing required parameter: 'tools[0].function'."),
        ({"tools": [{"type": "function", "function": {"name": "a.b"}}]},
         "Invalid 'tools[0].function.name': string does not match pattern. Expected a string that matches "
         "the pattern '^[a-zA-Z0-9_-]+$'."),
        ({"seed": "1"}, "Invalid type for 'seed': expected an integer, but got a string instead."),
    ]
    for extra, message in cases:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **extra}
        response = await post(gateway, "/v1/chat/completions", json.dumps(body))
        assert response.json()["error"]["message"] == message


@pytest.mark.parametrize("extra", [
    {"tools": [TOOL], "tool_choice": "auto", "parallel_tool_calls": False},
    {"tools": [TOOL], "tool_choice": "none"},
    {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"tools": [{"type": "function", "function": {"name": "no_parameters-1"}}]},
    {"response_format": {"type": "text"}},
    {"response_format": {"type": "json_object"}},
    {"response_format": SCHEMA},
    {"seed": 7, "logit_bias": {"50256": -100, "15": 100, "7": 0.5}},
])
async def test_what_openai_takes_passes(gateway, extra):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Answer in JSON please"}], **extra}
    response = await post(gateway, "/v1/chat/completions", json.dumps(body))
    assert response.status_code == 200, response.content
