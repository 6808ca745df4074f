"""The Responses API with the official openai SDK (`client.responses`) against a real gateway, for an
OpenAI-, an Anthropic- and a Gemini-type deployment of the fake provider: plain, streamed, a
function tool round trip, `text.format` json_schema, `previous_response_id`, retrieve, input items,
delete, cancel, input token counts, and another tenant's ids; and LangChain's `ChatOpenAI` in its Responses API mode."""

from __future__ import annotations

import json

import openai
import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.conftest import stop_process
from tests.e2e.conftest import WIRE_FORMAT_MODELS as MODELS
from tests.e2e.conftest import (
    WIRE_FORMATS_CONFIG,
    Stack,
    database_create,
    database_drop,
    deployment_env,
    fake_start,
    gateway_start,
    manage,
)

pytestmark = pytest.mark.e2e

# The three wire formats' config and a second tenant, for another tenant's ids.
CONFIG = WIRE_FORMATS_CONFIG + """  - slug: other
    name: Other Corp
"""
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Both tenants keep content (set before their keys are made, so no process has cached them)."""
    database_url, name = database_create()
    env = deployment_env(database_url, name)
    fake, port = fake_start(env)
    processes = [fake]
    try:
        manage(env, "migrate", "--noinput")
        config = tmp_path_factory.mktemp("responses") / "gateway.yaml"
        config.write_text(CONFIG.format(port=port))
        manage(env, "import_config", str(config))
        stack = Stack(base_url="", api_key="", database_url=database_url, log_path=tmp_path_factory.mktemp("log") / "g.log")
        stack.query("UPDATE accounting_tenant SET keep_content = true RETURNING id")
        keys = {slug: manage(env, "create_api_key", slug, "--name", "e2e").strip().splitlines()[-1]
                for slug in ("acme", "other")}
        gateway, stack.base_url = gateway_start(env, stack.log_path)
        processes.append(gateway)
        stack.api_key = keys["acme"]
        yield stack, keys["other"]
    finally:
        for process in processes:
            stop_process(process)
        database_drop(name)


def client(stack, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key or stack.api_key, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_plain_and_streamed(deployment, model):
    stack, _ = deployment
    api = client(stack)
    response = api.responses.create(model=model, input="Say hello", instructions="Be brief.", max_output_tokens=60)
    assert response.status == "completed" and response.output_text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    [(endpoint, prompt, completion)] = stack.wait_for_rows(
        "SELECT endpoint, prompt_tokens, completion_tokens FROM accounting_usagerecord WHERE response_id = %s",
        (response.id,), 1)
    assert (endpoint, prompt, completion) == ("responses", response.usage.input_tokens, response.usage.output_tokens)

    text, kinds = "", []
    for event in api.responses.create(model=model, input="Say hello", stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == text != "" and final.usage.output_tokens > 0

    with api.responses.stream(model=model, input="Say hello") as stream:
        assembled = stream.get_final_response()
    assert assembled.output_text and assembled.status == "completed"


@pytest.mark.parametrize("model", MODELS)
def test_function_tool_round_trip(deployment, model):
    stack, _ = deployment
    api = client(stack)
    first = api.responses.create(model=model, tools=[WEATHER], input="Weather in Paris? [[fake tool=get_weather]]")
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"]
    second = api.responses.create(model=model, tools=[WEATHER], previous_response_id=first.id, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}])
    assert second.status == "completed" and second.output_text

    with api.responses.stream(model=model, tools=[WEATHER], tool_choice="required", input="Weather in Paris?") as s:
        streamed = s.get_final_response()
    [call] = [item for item in streamed.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"]


@pytest.mark.parametrize("model", MODELS)
def test_json_schema_text_format(deployment, model):
    stack, _ = deployment
    response = client(stack).responses.create(
        model=model, input="Invent a person",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
    )
    person = json.loads(response.output_text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


@pytest.mark.parametrize("model", MODELS)
def test_previous_response_id_continues_the_conversation(deployment, model):
    stack, _ = deployment
    api = client(stack)
    first = api.responses.create(model=model, input="My name is Ada.")
    second = api.responses.create(model=model, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text
    # The provider was sent (and billed) the earlier turn too.
    [(prompt_first,)] = stack.wait_for_rows(
        "SELECT prompt_tokens FROM accounting_usagerecord WHERE response_id = %s", (first.id,), 1)
    [(prompt_second,)] = stack.wait_for_rows(
        "SELECT prompt_tokens FROM accounting_usagerecord WHERE response_id = %s", (second.id,), 1)
    assert prompt_second > prompt_first + first.usage.output_tokens - 1


def test_retrieve_input_items_delete_and_another_tenants_404(deployment):
    stack, other_key = deployment
    api, other = client(stack), client(stack, other_key)
    created = api.responses.create(model="gpt-4o-mini", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}], metadata={"task": "greeting"})
    fetched = api.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    [item] = list(api.responses.input_items.list(created.id))
    assert item.type == "message" and item.content[0].text == "Hello"
    for call in (lambda: other.responses.retrieve(created.id), lambda: other.responses.delete(created.id),
                 lambda: api.responses.retrieve("resp_0000"),
                 lambda: other.responses.create(model="gpt-4o-mini", input="hi", previous_response_id=created.id)):
        with pytest.raises((openai.NotFoundError, openai.BadRequestError)):
            call()
    api.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(created.id)


@pytest.mark.parametrize("model", MODELS)
def test_input_tokens_count_and_cancel(deployment, model):
    """`responses.input_tokens.count`: the provider's own count for Anthropic and Gemini (what the
    response is then billed for), an estimate for OpenAI; `responses.cancel` of a stored (synchronous)
    response is OpenAI's 400."""
    stack, other_key = deployment
    api = client(stack)
    counted = api.responses.input_tokens.with_raw_response.count(model=model, input="How many tokens is this?")
    source = counted.headers["x-gateway-token-count"]
    assert counted.parse().object == "response.input_tokens"
    created = api.responses.create(model=model, input="How many tokens is this?")
    assert source == ("estimate" if model == "gpt-4o-mini" else "provider")
    if source == "provider":
        assert counted.parse().input_tokens == created.usage.input_tokens
    with pytest.raises(openai.BadRequestError) as raised:
        api.responses.cancel(created.id)
    assert raised.value.body["message"] == "Cannot cancel a synchronous response."
    with pytest.raises(openai.NotFoundError):
        client(stack, other_key).responses.cancel(created.id)


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return "18 C"


def test_langchain_chat_openai_in_responses_mode(deployment):
    stack, _ = deployment

    def chat(**options) -> ChatOpenAI:
        return ChatOpenAI(model="gpt-4o-mini", base_url=f"{stack.base_url}/v1", api_key=stack.api_key,
                          use_responses_api=True, max_retries=0, **options)

    answer = chat().invoke("Say hello")
    assert answer.text and answer.usage_metadata["output_tokens"] > 0
    assert stack.wait_for_rows("SELECT 1 FROM accounting_usagerecord WHERE response_id = %s AND endpoint = %s",
                               (answer.response_metadata["id"], "responses"), 1)
    assert "".join(chunk.text for chunk in chat(streaming=True).stream("Say hello"))
    message = chat().bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"]
