"""Azure OpenAI adapter: the adapter sends through the client production uses, over real sockets,
to a local server answering as Azure does (`upstream.py`); each test asserts the exact URL,
headers and JSON sent, and the OpenAI-shaped body parsed back.

Fixtures `fixtures/azure_*` follow Azure's documented bodies, content-filter annotations included:
https://learn.microsoft.com/azure/ai-foundry/openai/reference and
https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-filter (the stream's first
chunk with only `prompt_filter_results`, annotation-only chunks, the `content_filter` 400).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from kernel.errors import ProviderError
from providers.adapters import ADAPTERS
from providers.adapters.azure import DEFAULT_API_VERSION, AzureOpenAIAdapter
from providers.adapters.base import Target, Usage
from tests.providers.upstream import UPSTREAM, Route

FIXTURES = Path(__file__).parent / "fixtures"
RESOURCE = UPSTREAM.url
CHAT_URL = f"{RESOURCE}/openai/deployments/gpt-4o-prod/chat/completions"
SSE = {"content-type": "text/event-stream"}
AZURE = Target(
    provider_id=1,
    provider_name="az",
    wire_type="azure",
    api_base=RESOURCE,
    upstream_model="gpt-4o-prod",
    api_key="az-key",
)
HELLO = [{"role": "user", "content": "Hello"}]


def fixture_json(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sent(route: Route) -> httpx.Request:
    return route.calls.last.request


@pytest.fixture
def azure(client):
    return AzureOpenAIAdapter(client)


def test_registry_maps_azure():
    assert ADAPTERS["azure"] is AzureOpenAIAdapter
    assert AzureOpenAIAdapter.wire_type == "azure"
    assert DEFAULT_API_VERSION == "2024-10-21"


async def test_chat_url_headers_and_body(upstream, azure):
    completion = fixture_json("azure_chat_completion.json")
    route = upstream.post(CHAT_URL).respond(200, json=completion)
    payload = {"model": "alias", "messages": HELLO, "temperature": 0.2, "seed": 7}

    result = await azure.chat(payload, AZURE)

    request = sent(route)
    assert str(request.url) == f"{CHAT_URL}?api-version=2024-10-21"
    assert request.headers["api-key"] == "az-key"
    assert "authorization" not in request.headers
    # The deployment is in the path; the body keeps it as `model`, as Azure's SDK sends it.
    assert json.loads(request.content) == {**payload, "model": "gpt-4o-prod"}
    # Content-filter annotations pass through untouched.
    assert result.body == completion
    assert result.usage == Usage(prompt_tokens=10, completion_tokens=7)


async def test_api_version_from_settings(upstream, azure, settings):
    settings.GATEWAY_AZURE_API_VERSION = "2025-04-01-preview"
    route = upstream.post(CHAT_URL).respond(200, json=fixture_json("azure_chat_completion.json"))

    await azure.chat({"messages": HELLO}, AZURE)

    assert sent(route).url.params["api-version"] == "2025-04-01-preview"


async def test_api_version_in_api_base_wins(upstream, azure, settings):
    settings.GATEWAY_AZURE_API_VERSION = "2025-04-01-preview"
    route = upstream.post(CHAT_URL).respond(200, json=fixture_json("azure_chat_completion.json"))
    pinned = Target(**{**AZURE.__dict__, "api_base": f"{RESOURCE}/?api-version=2024-06-01"})

    await azure.chat({"messages": HELLO}, pinned)

    assert str(sent(route).url) == f"{CHAT_URL}?api-version=2024-06-01"


async def test_deployment_name_is_quoted(upstream, azure):
    route = upstream.post(f"{RESOURCE}/openai/deployments/my%20gpt/chat/completions").respond(
        200, json=fixture_json("azure_chat_completion.json")
    )

    await azure.chat({"messages": HELLO}, Target(**{**AZURE.__dict__, "upstream_model": "my gpt"}))

    assert route.called


async def test_openai_account_features_are_dropped(upstream, azure):
    route = upstream.post(CHAT_URL).respond(200, json=fixture_json("azure_chat_completion.json"))

    await azure.chat({"messages": HELLO, "store": True, "service_tier": "auto", "top_p": 0.5}, AZURE)

    assert json.loads(sent(route).content) == {"model": "gpt-4o-prod", "messages": HELLO, "top_p": 0.5}


async def test_stream_skips_chunks_that_carry_nothing(upstream, azure):
    stream = fixture_bytes("azure_chat_stream.txt")
    route = upstream.post(CHAT_URL).respond(200, content=stream, headers=SSE)

    chunks = [chunk async for chunk in azure.chat_stream({"messages": HELLO, "stream": True}, AZURE)]

    assert json.loads(sent(route).content) == {
        "model": "gpt-4o-prod",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = [
        json.loads(line.removeprefix("data: "))
        for line in stream.decode().splitlines()
        if line.startswith("data: {")
    ]
    # Dropped: the opening prompt_filter_results chunk and the trailing annotation-only chunk.
    assert chunks == [events[1], events[2], events[3], events[4], events[6]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:3]] == ["", "Hello", "!"]
    assert chunks[-1]["usage"] == {"completion_tokens": 2, "prompt_tokens": 10, "total_tokens": 12}


async def test_content_filter_finish_reason_passes_through(upstream, azure):
    completion = fixture_json("azure_chat_completion.json")
    completion["choices"][0]["finish_reason"] = "content_filter"
    completion["choices"][0]["message"]["content"] = None
    upstream.post(CHAT_URL).respond(200, json=completion)

    result = await azure.chat({"messages": HELLO}, AZURE)

    assert result.body["choices"][0]["finish_reason"] == "content_filter"


async def test_content_filter_400_is_content_filtered(upstream, azure):
    body = fixture_json("azure_content_filter_error.json")
    upstream.post(CHAT_URL).respond(400, json=body)

    with pytest.raises(ProviderError) as caught:
        await azure.chat({"messages": HELLO}, AZURE)

    assert caught.value.error_class == "content_filtered"
    assert caught.value.retryable is False
    assert caught.value.message == f"Provider 'az' returned 400: {body['error']['message']}"


@pytest.mark.parametrize(
    ("status", "body", "headers", "error_class", "retry_after"),
    [
        (
            429,
            {"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under "
                       "Azure OpenAI API version 2024-10-21 have exceeded token rate limit. Please retry "
                       "after 6 seconds."}},
            {"retry-after": "6", "retry-after-ms": "5500"},
            "rate_limited",
            5.5,
        ),
        (
            401,
            {"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong "
                       "API endpoint."}},
            {},
            "auth",
            None,
        ),
        (
            404,
            {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource "
                       "does not exist."}},
            {},
            "bad_request",
            None,
        ),
        (
            400,
            {"error": {"message": "This model's maximum context length is 128000 tokens.", "type":
                       "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
            {},
            "context_length_exceeded",
            None,
        ),
        (500, {"error": {"code": "InternalServerError", "message": "Backend returned unexpected response."}},
         {}, "upstream_server", None),
    ],
)
async def test_error_mapping(upstream, azure, status, body, headers, error_class, retry_after):
    upstream.post(CHAT_URL).respond(status, json=body, headers=headers)

    with pytest.raises(ProviderError) as caught:
        await azure.chat({"messages": HELLO}, AZURE)

    assert caught.value.error_class == error_class
    assert caught.value.upstream_status == status
    assert caught.value.retry_after == retry_after
    assert caught.value.message == f"Provider 'az' returned {status}: {body['error']['message']}"


async def test_embeddings(upstream, azure):
    embeddings = fixture_json("azure_embeddings.json")
    route = upstream.post(f"{RESOURCE}/openai/deployments/embed-small/embeddings").respond(200, json=embeddings)
    target = Target(**{**AZURE.__dict__, "upstream_model": "embed-small"})

    result = await azure.embeddings({"model": "alias", "input": "hello", "encoding_format": "base64"}, target)

    request = sent(route)
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == "az-key"
    assert json.loads(request.content) == {"model": "embed-small", "input": "hello", "encoding_format": "base64"}
    assert result.body == embeddings
    assert result.usage == Usage(prompt_tokens=2, completion_tokens=0)
