"""Tools through the gateway with both official SDKs, across wire formats: the anthropic SDK
against a model served by the OpenAI wire format (and, where its adapter supports tools, the
openai SDK against a model served by the Anthropic one)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

pytestmark = pytest.mark.e2e

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "schema": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
               "required": ["city"]},
}


def test_openai_sdk_tools_round_trip_on_openai_wire(stack):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)
    tools = [{"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                                "parameters": WEATHER["schema"]}}]
    messages = [{"role": "user", "content": "Weather in Paris? [[fake tool=get_weather]]"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}]
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content


def test_openai_sdk_streams_tool_call_deltas(stack):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)
    tools = [{"type": "function", "function": {"name": WEATHER["name"], "parameters": WEATHER["schema"]}}]
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, tools=tools, tool_choice="required",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                name += call.function.name or ""
                arguments += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    assert json.loads(arguments)["city"]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_tools_on_openai_wire(stack, stream):
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    tools = [{"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["schema"]}]
    request = {"model": "gpt-4o-mini", "max_tokens": 200, "tools": tools,
               "messages": [{"role": "user", "content": "Weather in Paris? [[fake tool=get_weather]]"}]}
    if stream:
        with client.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**request)
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert message.stop_reason == "tool_use" and use.name == "get_weather" and use.input["city"]
    follow = client.messages.create(
        model="gpt-4o-mini", max_tokens=200, tools=tools,
        messages=request["messages"] + [
            {"role": "assistant", "content": [block.model_dump() for block in message.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C"}]},
        ],
    )
    assert follow.stop_reason == "end_turn" and follow.content[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_tools_on_anthropic_wire(stack, stream):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)
    tools = [{"type": "function", "function": {"name": WEATHER["name"], "parameters": WEATHER["schema"]}}]
    messages = [{"role": "user", "content": "Weather in Paris? [[fake tool=get_weather]]"}]
    if stream:
        name, arguments, call_id = "", "", None
        for chunk in client.chat.completions.create(model="claude-haiku-4-5", messages=messages, tools=tools, stream=True):
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or ():
                    call_id = call.id or call_id
                    name += (call.function.name or "") if call.function else ""
                    arguments += (call.function.arguments or "") if call.function else ""
        assistant = {"role": "assistant", "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]}
    else:
        first = client.chat.completions.create(model="claude-haiku-4-5", messages=messages, tools=tools)
        assert first.choices[0].finish_reason == "tool_calls"
        call = first.choices[0].message.tool_calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        assistant = first.choices[0].message.model_dump(exclude_none=True)
    assert name == "get_weather" and json.loads(arguments)["city"]
    answer = client.chat.completions.create(
        model="claude-haiku-4-5", tools=tools,
        messages=messages + [assistant, {"role": "tool", "tool_call_id": call_id, "content": "18 C"}],
    )
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
