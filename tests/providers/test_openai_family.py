"""The OpenAI-compatible family: per-service quirks and the per-provider parameter policy.

A service is known by the host of its `api_base`: requests to `http://api.mistral.ai/v1` and the
like reach the local scripted server (`upstream.py`) as the client's proxy, named by the
environment as an operator would; the adapter sends through the client production uses."""

import json

import pytest

from kernel.errors import InvalidRequest
from providers.adapters import Target
from providers.adapters.openai import OpenAIAdapter
from providers.adapters.openai_family import quirks_for
from providers.transport import Timeouts, UpstreamClient
from tests.providers.upstream import UPSTREAM

BODY = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def target(api_base: str, **extra) -> Target:
    return Target(provider_id=1, provider_name="p", wire_type="openai", api_base=api_base,
                  upstream_model="m", api_key="k", **extra)


def sent(route) -> dict:
    return json.loads(route.calls.last.request.content)


@pytest.fixture
async def proxied(upstream, monkeypatch) -> UpstreamClient:
    """A client whose proxy is the scripted server: every host's requests reach it."""
    monkeypatch.setenv("HTTP_PROXY", UPSTREAM.url)
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = UpstreamClient(timeouts=Timeouts(connect=2.0, read=5.0, pool=5.0))
    yield client
    await client.aclose()


@pytest.mark.parametrize(
    "api_base, family",
    [("https://api.mistral.ai/v1", "mistral"), ("https://api.groq.com/openai/v1", "groq"),
     ("http://127.0.0.1:11434/v1", "ollama"), ("https://openrouter.ai/api/v1", "openrouter"),
     ("https://api.openai.com/v1", "openai"), ("https://llm.internal.example/v1", "openai-compatible")],
)
def test_family_by_host(api_base, family):
    assert quirks_for(api_base).name == family


async def test_mistral_spelling_and_no_stream_options(upstream, proxied):
    route = upstream.post("http://api.mistral.ai/v1/chat/completions").respond(
        200, text='data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}\n\ndata: [DONE]\n\n',
        headers={"content-type": "text/event-stream"},
    )
    adapter = OpenAIAdapter(proxied)
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}, "seed": 7,
            "max_completion_tokens": 20, "logit_bias": {"1": 2}, "user": "u"}
    [_ async for _ in adapter.chat_stream(body, target("http://api.mistral.ai/v1"))]
    assert route.calls.last.request.url.host == "api.mistral.ai"
    body = sent(route)
    assert body["random_seed"] == 7 and "seed" not in body
    assert body["max_tokens"] == 20 and "max_completion_tokens" not in body
    assert "stream_options" not in body and "logit_bias" not in body and "user" not in body


async def test_groq_stream_usage_is_lifted_from_x_groq(upstream, proxied):
    stream = (
        'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}],'
        '"x_groq":{"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}}\n\ndata: [DONE]\n\n'
    )
    upstream.post("http://api.groq.com/openai/v1/chat/completions").respond(
        200, text=stream, headers={"content-type": "text/event-stream"}
    )
    chunks = [c async for c in OpenAIAdapter(proxied).chat_stream({**BODY, "stream": True}, target("http://api.groq.com/openai/v1"))]
    assert chunks[-1]["usage"]["completion_tokens"] == 2


async def test_provider_policy_reject_names_the_parameter(upstream, proxied):
    upstream.post("http://llm.example/v1/chat/completions").respond(200, json=COMPLETION)
    adapter = OpenAIAdapter(proxied)
    strict = target("http://llm.example/v1", unsupported_params=frozenset({"top_p"}), unsupported_policy="reject")
    with pytest.raises(InvalidRequest) as refused:
        await adapter.chat({**BODY, "top_p": 0.5}, strict)
    assert refused.value.param == "top_p" and "does not support" in refused.value.message


async def test_provider_policy_drop_removes_the_parameter(upstream, proxied):
    route = upstream.post("http://llm.example/v1/chat/completions").respond(200, json=COMPLETION)
    lenient = target("http://llm.example/v1", unsupported_params=frozenset({"top_p"}))
    await OpenAIAdapter(proxied).chat({**BODY, "top_p": 0.5, "temperature": 0.2}, lenient)
    assert "top_p" not in sent(route) and sent(route)["temperature"] == 0.2


async def test_openai_itself_gets_everything(upstream, proxied):
    route = upstream.post("http://api.openai.com/v1/chat/completions").respond(200, json=COMPLETION)
    await OpenAIAdapter(proxied).chat({**BODY, "service_tier": "flex", "seed": 1}, target("http://api.openai.com/v1"))
    assert sent(route)["service_tier"] == "flex" and sent(route)["seed"] == 1
