"""`POST /v1/completions` in process: legacy text completions through the chat pipeline
(`routing/completions_format.py`), passed through to a completion model's `/v1/completions` or
translated to chat for a chat model, against the real fake provider, OpenAI- and Anthropic-type."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from accounting.models import UsageRecord
from tests.routing.test_chat_api import post, records, sse_events

pytestmark = pytest.mark.django_db(transaction=True)


def completion_body(prompt="Say this is a test", **extra) -> str:
    return json.dumps({"model": "gpt-4o-mini", "prompt": prompt, **extra})


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
async def test_a_completion_is_a_text_completion_priced_and_recorded(gateway, model):
    response = await post(gateway, "/v1/completions", completion_body(model=model, max_tokens=40))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["text"] and choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    [record] = await records()
    assert (record.endpoint, record.response_id, record.status) == ("completions", body["id"], "success")
    assert record.prompt_tokens == body["usage"]["prompt_tokens"] > 0
    assert record.completion_tokens == body["usage"]["completion_tokens"] > 0
    assert record.cost_usd > Decimal("0") and not record.usage_estimated


async def test_max_tokens_defaults_to_16_as_openai(gateway):
    prompt = "[[fake echo]] " + "word " * 100
    default = (await post(gateway, "/v1/completions", completion_body(prompt))).json()
    sixteen = (await post(gateway, "/v1/completions", completion_body(prompt, max_tokens=16))).json()
    assert default["choices"][0]["finish_reason"] == "length"
    assert default["choices"][0]["text"] == sixteen["choices"][0]["text"]
    assert default["usage"] == sixteen["usage"]


async def test_a_list_of_one_prompt_and_n_choices(gateway):
    response = await post(gateway, "/v1/completions", completion_body(["Hello"], n=2))
    assert response.status_code == 200
    assert [choice["index"] for choice in response.json()["choices"]] == [0, 1]


async def test_echo_puts_the_prompt_in_front_of_the_text(gateway):
    plain = (await post(gateway, "/v1/completions", completion_body("Echo me", seed=1))).json()
    echoed = (await post(gateway, "/v1/completions", completion_body("Echo me", seed=1, echo=True))).json()
    assert echoed["choices"][0]["text"].startswith("Echo me")
    assert not plain["choices"][0]["text"].startswith("Echo me")


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
async def test_a_streamed_completion_is_text_completion_chunks_then_done(gateway, model):
    response = await post(gateway, "/v1/completions", completion_body(
        model=model, stream=True, echo=True, stream_options={"include_usage": True}))
    assert response.status_code == 200
    events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert len({chunk["id"] for chunk in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    text = "".join(choice["text"] for chunk in chunks for choice in chunk["choices"])
    assert text.startswith("Say this is a test") and len(text) > len("Say this is a test")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert any(choice["finish_reason"] for chunk in chunks for choice in chunk["choices"])
    [record] = await records()
    assert (record.endpoint, record.stream, record.status) == ("completions", True, "success")
    assert record.response_id == chunks[0]["id"]
    assert record.completion_tokens == chunks[-1]["usage"]["completion_tokens"]


@pytest.mark.parametrize(("extra", "param", "code"), [
    ({"suffix": "after"}, "suffix", "unsupported_value"),
    ({"suffix": 3}, "suffix", "invalid_type"),
    ({"logprobs": 6}, "logprobs", "invalid_value"),
    ({"best_of": 1, "n": 2}, "best_of", "invalid_value"),
    ({"best_of": 2, "stream": True}, "best_of", "invalid_value"),
    ({"logprobs": 2}, "logprobs", "unsupported_value"),
    ({"best_of": 3}, "best_of", "unsupported_value"),
    ({"prompt": ["one", "two"]}, "prompt", "unsupported_value"),
    ({"prompt": [1, 2, 3]}, "prompt", "unsupported_value"),
    ({"prompt": 7}, "prompt", "invalid_type"),
    ({"prompt": None}, "prompt", "missing_required_parameter"),
    ({"echo": "yes"}, "echo", "invalid_value"),
    ({"messages": []}, "messages", "unknown_parameter"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"temperature": 3}, "temperature", "invalid_value"),
])
async def test_what_cannot_be_honoured_is_a_400_naming_it_and_is_recorded(gateway, extra, param, code):
    body = {"model": "gpt-4o-mini", "prompt": "Hi", **extra}
    body = {key: value for key, value in body.items() if value is not None}
    response = await post(gateway, "/v1/completions", json.dumps(body))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert [r.status for r in await records()] == ["error"]


async def test_a_completion_needs_a_key_and_a_post(gateway):
    from tests.asgi_client import ApiClient

    refused = await ApiClient().post("/v1/completions", completion_body(), content_type="application/json")
    assert refused.status_code == 401
    other = await ApiClient().get("/v1/completions", headers=gateway.auth)
    assert other.status_code == 405 and other.headers["allow"] == "POST"
    assert await UsageRecord.objects.acount() == 0


# --- passed through to a completion model -------------------------------------------------------
@pytest.fixture
def instruct(gateway):
    """A completion model on the OpenAI-type provider, saved without a mode: the catalogue's."""
    from providers.models import ProviderModel

    model = ProviderModel.objects.create(
        provider=gateway.provider, alias="instruct", upstream_model="gpt-3.5-turbo-instruct",
        input_price_per_million="1.50", output_price_per_million="2.00",
    )
    assert model.mode == "completion"
    return gateway


async def test_a_completion_model_is_passed_through_with_what_only_it_honours(instruct):
    response = await post(instruct, "/v1/completions", completion_body(
        ["Say this", "Say that"], model="instruct", n=2, max_tokens=4, echo=True, logprobs=2, suffix="!"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "text_completion" and body["model"] == "gpt-3.5-turbo-instruct"
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2, 3]
    for choice in body["choices"]:
        prompt = "Say this" if choice["index"] < 2 else "Say that"
        assert choice["text"].startswith(prompt) and choice["finish_reason"] == "length"
        logprobs = choice["logprobs"]
        assert "".join(logprobs["tokens"]) == choice["text"] and logprobs["token_logprobs"][0] is None
        assert len(logprobs["top_logprobs"]) == len(logprobs["tokens"]) == len(logprobs["text_offset"])
        assert all(len(top) <= 3 for top in logprobs["top_logprobs"][1:])
    usage = body["usage"]
    assert usage["completion_tokens"] == 4 * 4  # every choice of every prompt, cut at max_tokens
    [record] = await records()
    assert (record.endpoint, record.status, record.served_model) == ("completions", "success", "gpt-3.5-turbo-instruct")
    assert (record.prompt_tokens, record.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    expected = (Decimal("1.50") * usage["prompt_tokens"] + Decimal("2.00") * usage["completion_tokens"]) / 10**6
    assert record.cost_usd == expected and not record.usage_estimated


async def test_a_streamed_completion_is_passed_through_with_its_logprobs(instruct):
    response = await post(instruct, "/v1/completions", completion_body(
        "Stream this", model="instruct", stream=True, logprobs=1, stream_options={"include_usage": True}))
    assert response.status_code == 200
    events = await sse_events(response)
    chunks = [json.loads(event) for event in events[:-1]]
    assert events[-1] == "[DONE]" and {chunk["object"] for chunk in chunks} == {"text_completion"}
    pieces = [choice for chunk in chunks for choice in chunk["choices"] if choice["text"]]
    assert pieces and all(choice["logprobs"]["tokens"] == [choice["text"]] for choice in pieces)
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == len(pieces)
    [record] = await records()
    assert (record.endpoint, record.stream, record.completion_tokens) == ("completions", True, len(pieces))
    assert record.response_id == chunks[0]["id"] and record.cost_usd > 0


async def test_a_chat_request_for_a_completion_model_is_refused(instruct):
    response = await post(instruct, "/v1/chat/completions", json.dumps(
        {"model": "instruct", "messages": [{"role": "user", "content": "Hi"}]}))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("model", "model_not_supported")
    assert "/v1/completions" in error["message"]
