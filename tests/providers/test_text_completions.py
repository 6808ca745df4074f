"""Legacy text completions at the adapter edge (`providers/adapters/text_completions.py`): a
completion model's request passed through to `/completions` as OpenAI documents it, its answer read
back into the chat shape with its logprobs; a chat model's translated to chat, the prompt echoed.
Over real sockets to a local server answering as OpenAI does (`upstream.py`).
Reference: https://platform.openai.com/docs/api-reference/completions/object"""

from __future__ import annotations

import dataclasses
import json

import pytest

from kernel.errors import InvalidRequest
from providers.adapters.anthropic import AnthropicAdapter
from providers.adapters.azure import AzureOpenAIAdapter
from providers.adapters.base import Usage
from providers.adapters.openai import OpenAIAdapter
from providers.adapters.text_completions import TEXT_COMPLETION
from tests.providers.test_adapters import ANTHROPIC, OPENAI, SSE, fixture_json, sent_json
from tests.providers.upstream import UPSTREAM

INSTRUCT = dataclasses.replace(OPENAI, upstream_model="gpt-3.5-turbo-instruct", mode="completion")
LOGPROBS = {"tokens": [" hi"], "token_logprobs": [-0.5], "top_logprobs": [{" hi": -0.5}], "text_offset": [5]}
TEXT_COMPLETION_BODY = {
    "id": "cmpl-abc", "object": "text_completion", "created": 1700000000, "model": "gpt-3.5-turbo-instruct",
    "choices": [{"text": " hi", "index": 0, "logprobs": LOGPROBS, "finish_reason": "length"},
                {"text": " yo", "index": 1, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
}


def completion_payload(*prompts: str, **own) -> dict:
    return {"model": "alias", "messages": [{"role": "user", "content": p} for p in prompts], "max_tokens": 3,
            TEXT_COMPLETION: own}


async def test_a_completion_model_gets_openais_completions_body(upstream, client):
    route = upstream.post(f"{UPSTREAM.url}/v1/completions").respond(200, json=TEXT_COMPLETION_BODY)

    result = await OpenAIAdapter(client).chat(
        completion_payload("Hello", "Again", echo=True, logprobs=1, suffix="!", best_of=2), INSTRUCT)

    assert sent_json(route) == {"model": "gpt-3.5-turbo-instruct", "prompt": ["Hello", "Again"], "max_tokens": 3,
                                "echo": True, "logprobs": 1, "suffix": "!", "best_of": 2}
    assert result.body["object"] == "chat.completion"
    assert result.body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": " hi"}, "logprobs": LOGPROBS, "finish_reason": "length"},
        {"index": 1, "message": {"role": "assistant", "content": " yo"}, "logprobs": None, "finish_reason": "stop"},
    ]
    assert result.usage == Usage(prompt_tokens=2, completion_tokens=2)


async def test_a_completion_models_stream_is_read_as_chat_chunks(upstream, client):
    chunk = {"id": "cmpl-abc", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct"}
    events = [
        chunk | {"choices": [{"text": " hi", "index": 0, "logprobs": LOGPROBS, "finish_reason": None}], "usage": None},
        chunk | {"choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}], "usage": None},
        chunk | {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
    ]
    body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"
    route = upstream.post(f"{UPSTREAM.url}/v1/completions").respond(200, content=body, headers=SSE)

    chunks = [c async for c in OpenAIAdapter(client).chat_stream(
        {**completion_payload("Hello"), "stream": True}, INSTRUCT)]

    assert sent_json(route)["stream_options"] == {"include_usage": True} and sent_json(route)["prompt"] == "Hello"
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"content": " hi"}, "logprobs": LOGPROBS, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    assert chunks[-1]["usage"]["completion_tokens"] == 1


async def test_azure_streams_a_completion_deployment_from_its_completions_path(upstream, client):
    chunk = {"id": "cmpl-az", "object": "text_completion", "created": 1, "model": "instruct-prod"}
    events = [chunk | {"choices": [], "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
              chunk | {"choices": [{"text": " hi", "index": 0, "logprobs": None, "finish_reason": None}]},
              chunk | {"choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]}]
    body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"
    route = upstream.post(f"{UPSTREAM.url}/openai/deployments/instruct-prod/completions").respond(
        200, content=body, headers=SSE)
    deployment = dataclasses.replace(INSTRUCT, wire_type="azure", api_base=UPSTREAM.url,
                                     upstream_model="instruct-prod")

    chunks = [c async for c in AzureOpenAIAdapter(client).chat_stream(
        {**completion_payload("Hello"), "stream": True}, deployment)]

    assert route.calls.last.request.url.params["api-version"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == " hi"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_a_chat_model_gets_the_chat_call_with_the_prompt_echoed(upstream, client):
    route = upstream.post(f"{UPSTREAM.url}/v1/chat/completions").respond(
        200, json=fixture_json("openai_chat_completion.json"))

    result = await OpenAIAdapter(client).chat(completion_payload("Hello", echo=True), OPENAI)

    assert sent_json(route) == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}],
                                "max_tokens": 3}
    answer = fixture_json("openai_chat_completion.json")["choices"][0]["message"]["content"]
    assert result.body["choices"][0]["message"]["content"] == "Hello" + answer


async def test_a_vendor_without_text_completions_cannot_serve_a_completion_model(client):
    completion_model = dataclasses.replace(ANTHROPIC, mode="completion")
    with pytest.raises(InvalidRequest) as refused:
        await AnthropicAdapter(client).chat(completion_payload("Hello"), completion_model)
    assert refused.value.param == "model"
