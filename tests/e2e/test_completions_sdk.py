"""End to end: the official openai SDK's legacy `completions.create` against the gateway under
uvicorn, plain and streamed: translated to chat for chat models (OpenAI- and Anthropic-type), passed
through to a completion model (gpt-3.5-turbo-instruct) with what only it honours; and the API's 404
for an unknown /v1/ path, whatever the method, over real HTTP."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

RECORD = (
    "SELECT endpoint, status, stream, prompt_tokens, completion_tokens, cost_usd "
    "FROM accounting_usagerecord WHERE response_id = %s"
)
MODELS = ["gpt-4o-mini", "claude-haiku-4-5"]


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_completions_create(client, stack, model):
    completion = client.completions.create(model=model, prompt="Say this is a test", max_tokens=30)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.choices[0].text and completion.choices[0].finish_reason in ("stop", "length")
    [(endpoint, status, stream, prompt, output, cost)] = stack.wait_for_rows(RECORD, (completion.id,), 1)
    assert (endpoint, status, stream) == ("completions", "success", False)
    assert (prompt, output) == (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert cost > 0


@pytest.mark.parametrize("model", MODELS)
def test_completions_create_streamed(client, stack, model):
    chunks = list(client.completions.create(
        model=model, prompt="Stream a test", stream=True, echo=True, stream_options={"include_usage": True},
    ))
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    assert text.startswith("Stream a test") and len(text) > len("Stream a test")
    assert all(chunk.object == "text_completion" for chunk in chunks)
    usage = chunks[-1].usage
    assert usage.completion_tokens > 0
    [(endpoint, status, stream, _, output, _)] = stack.wait_for_rows(RECORD, (chunks[0].id,), 1)
    assert (endpoint, status, stream, output) == ("completions", "success", True, usage.completion_tokens)


def test_a_completion_model_gets_the_request_as_it_is(client, stack):
    completion = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["Say this", "Say that"], max_tokens=5, echo=True,
        logprobs=2, suffix=".", n=2,
    )
    assert completion.model == "gpt-3.5-turbo-instruct" and len(completion.choices) == 4
    for choice in completion.choices:
        assert choice.text.startswith("Say this" if choice.index < 2 else "Say that")
        assert "".join(choice.logprobs.tokens) == choice.text
        assert len(choice.logprobs.token_logprobs) == len(choice.logprobs.text_offset)
    [(endpoint, status, _, prompt, output, cost)] = stack.wait_for_rows(RECORD, (completion.id,), 1)
    assert (endpoint, status, prompt, output) == (
        "completions", "success", completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert cost == (Decimal("1.50") * prompt + Decimal("2.00") * output) / 10**6


def test_a_completion_model_streams_through(client, stack):
    chunks = list(client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Stream a test", stream=True, logprobs=0,
        stream_options={"include_usage": True},
    ))
    pieces = [choice for chunk in chunks for choice in chunk.choices if choice.text]
    assert pieces and all(choice.logprobs.tokens == [choice.text] for choice in pieces)
    [(endpoint, status, stream, _, output, _)] = stack.wait_for_rows(RECORD, (chunks[0].id,), 1)
    assert (endpoint, status, stream, output) == ("completions", "success", True, chunks[-1].usage.completion_tokens)


def test_a_completion_model_is_not_a_chat_model(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-3.5-turbo-instruct", messages=[{"role": "user", "content": "Hi"}])
    assert raised.value.body["param"] == "model" and "/v1/completions" in raised.value.body["message"]


def test_what_a_completion_cannot_honour_is_the_sdks_bad_request(client):
    for model in MODELS:  # chat models: translated, and a chat call has no insertion or logprobs
        for option, value in (("suffix", "after"), ("logprobs", 1)):
            with pytest.raises(openai.BadRequestError) as raised:
                client.completions.create(model=model, prompt="Hi", **{option: value})
            assert raised.value.body["param"] == option


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
@pytest.mark.parametrize("path", ["/v1/no-such-route", "/v1/assistants", "/v1/chat/completions/extra", "/v1/a/b/"])
def test_an_unknown_v1_path_is_the_apis_404_for_every_method(stack, method, path):
    response = httpx.request(method, f"{stack.base_url}{path}", json={"model": "x"},
                             headers={"Authorization": f"Bearer {stack.api_key}"})
    assert response.status_code == 404
    if method != "HEAD":
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "not_found")
        assert error["message"] == f"Unknown API route: {method} {path}"


def test_an_unknown_v1_path_from_the_sdk_is_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.post("/no-such-resource", cast_to=httpx.Response, body={"model": "gpt-4o-mini"})
