"""The OpenAI-compatible family: per-service quirks and the per-provider parameter policy."""

import json

import httpx
import pytest
import respx

from gateway_site.errors import InvalidRequest
from providers.adapters import Target
from providers.adapters.openai import OpenAIAdapter
from providers.adapters.openai_family import quirks_for

BODY = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def target(api_base: str, **extra) -> Target:
    return Target(provider_id=1, provider_name="p", wire_type="openai", api_base=api_base,
                  upstream_model="m", api_key="k", **extra)


def sent(route) -> dict:
    return json.loads(route.calls.last.request.content)


@pytest.mark.parametrize(
    "api_base, family",
    [("https://api.mistral.ai/v1", "mistral"), ("https://api.groq.com/openai/v1", "groq"),
     ("http://127.0.0.1:11434/v1", "ollama"), ("https://openrouter.ai/api/v1", "openrouter"),
     ("https://api.openai.com/v1", "openai"), ("https://llm.internal.example/v1", "openai-compatible")],
)
def test_family_by_host(api_base, family):
    assert quirks_for(api_base).name == family


@respx.mock
async def test_mistral_spelling_and_no_stream_options():
    route = respx.post("https://api.mistral.ai/v1/chat/completions").respond(
        200, text='data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}\n\ndata: [DONE]\n\n',
        headers={"content-type": "text/event-stream"},
    )
    adapter = OpenAIAdapter(httpx.AsyncClient())
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}, "seed": 7,
            "max_completion_tokens": 20, "logit_bias": {"1": 2}, "user": "u"}
    [_ async for _ in adapter.chat_stream(body, target("https://api.mistral.ai/v1"))]
    upstream = sent(route)
    assert upstream["random_seed"] == 7 and "seed" not in upstream
    assert upstream["max_tokens"] == 20 and "max_completion_tokens" not in upstream
    assert "stream_options" not in upstream and "logit_bias" not in upstream and "user" not in upstream


@respx.mock
async def test_groq_stream_usage_is_lifted_from_x_groq():
    stream = (
        'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}],'
        '"x_groq":{"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}}\n\ndata: [DONE]\n\n'
    )
    respx.post("https://api.groq.com/openai/v1/chat/completions").respond(
        200, text=stream, headers={"content-type": "text/event-stream"}
    )
    chunks = [c async for c in OpenAIAdapter(httpx.AsyncClient()).chat_stream({**BODY, "stream": True}, target("https://api.groq.com/openai/v1"))]
    assert chunks[-1]["usage"]["completion_tokens"] == 2


@respx.mock
async def test_provider_policy_reject_names_the_parameter():
    respx.post("https://llm.example/v1/chat/completions").respond(200, json=COMPLETION)
    adapter = OpenAIAdapter(httpx.AsyncClient())
    strict = target("https://llm.example/v1", unsupported_params=frozenset({"top_p"}), unsupported_policy="reject")
    with pytest.raises(InvalidRequest) as refused:
        await adapter.chat({**BODY, "top_p": 0.5}, strict)
    assert refused.value.param == "top_p" and "does not support" in refused.value.message


@respx.mock
async def test_provider_policy_drop_removes_the_parameter():
    route = respx.post("https://llm.example/v1/chat/completions").respond(200, json=COMPLETION)
    lenient = target("https://llm.example/v1", unsupported_params=frozenset({"top_p"}))
    await OpenAIAdapter(httpx.AsyncClient()).chat({**BODY, "top_p": 0.5, "temperature": 0.2}, lenient)
    assert "top_p" not in sent(route) and sent(route)["temperature"] == 0.2


@respx.mock
async def test_openai_itself_gets_everything():
    route = respx.post("https://api.openai.com/v1/chat/completions").respond(200, json=COMPLETION)
    await OpenAIAdapter(httpx.AsyncClient()).chat({**BODY, "service_tier": "flex", "seed": 1}, target("https://api.openai.com/v1"))
    assert sent(route)["service_tier"] == "flex" and sent(route)["seed"] == 1
