"""End to end: the official openai SDK against the gateway under uvicorn, over real HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.conftest import PROVIDER_SECRETS

pytestmark = pytest.mark.e2e

RECORD_BY_RESPONSE = (
    "SELECT status, stream, prompt_tokens, completion_tokens, cost_usd, usage_estimated, provider_name "
    "FROM accounting_usagerecord WHERE response_id = %s"
)


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)


def test_chat_completion(client, stack):
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0
    [(status, stream, prompt, completion_tokens, cost, estimated, provider)] = stack.wait_for_rows(
        RECORD_BY_RESPONSE, (completion.id,), 1
    )
    assert (status, stream, estimated, provider) == ("success", False, False, "fake")
    assert (prompt, completion_tokens) == (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert cost > 0


def test_streamed_chat_completion_with_usage_chunk(client, stack):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    rows = stack.wait_for_rows(RECORD_BY_RESPONSE, (chunks[0].id,), 1)
    assert rows[0][:2] == ("success", True)
    assert rows[0][3] == chunks[-1].usage.completion_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)


def test_anthropic_wire_model_through_openai_sdk(client):
    chunks = list(
        client.chat.completions.create(
            model="claude-haiku-4-5",
            messages=[{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.prompt_tokens > 0


def test_embeddings_with_sdk_default_base64(client):
    result = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(result.data) == 2
    assert all(isinstance(value, float) for value in result.data[0].embedding)
    assert result.usage.prompt_tokens > 0


def test_model_list(client):
    assert {model.id for model in client.models.list()} == {
        "gpt-4o-mini", "text-embedding-3-small", "gpt-3.5-turbo-instruct", "claude-haiku-4-5"
    }


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"model": "gpt-4o-mini", "messages": [], "api_key": "sk-gw-wrong"}, openai.AuthenticationError),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, openai.NotFoundError),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 9}, openai.BadRequestError),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[[fake status=500]]"}]}, openai.InternalServerError),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[[fake status=429]]"}]}, openai.RateLimitError),
    ],
)
def test_errors_reach_the_sdk_as_its_own_exceptions(stack, kwargs, error):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=kwargs.pop("api_key", stack.api_key), max_retries=0)
    with pytest.raises(error) as caught:
        client.chat.completions.create(**kwargs)
    assert caught.value.body["message"]


def test_client_disconnect_mid_stream_still_records_usage(stack):
    content = "[[fake chunks=400 chunk_delay_ms=20]] a long answer please"
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": content}]}
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.stream("POST", f"{stack.base_url}/v1/chat/completions", json=body, headers=headers, timeout=10) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        seen = 0
        for line in lines:
            seen += line.startswith("data: ")
            if seen == 5:
                break
    rows = stack.wait_for_rows(RECORD_BY_RESPONSE, (first["id"],), 1)
    status, stream, prompt, completion_tokens, cost, estimated, _ = rows[0]
    assert status == "cancelled" and stream
    assert 0 < completion_tokens < 400
    assert estimated and cost > 0


def test_provider_keys_and_tenant_keys_never_reach_the_logs(client, stack):
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    list(client.chat.completions.create(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], stream=True))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "[[fake status=401]]"}])
    stack.wait_for_rows(RECORD_BY_RESPONSE, (completion.id,), 1)
    logs = stack.log_path.read_text()
    assert completion.id.removeprefix("chatcmpl-") in logs.replace("-", "")  # the log is being written
    entries = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(entry.get("error_class") == "auth" for entry in entries)  # the upstream 401, without its key
    for secret in (*PROVIDER_SECRETS, stack.api_key):
        assert secret not in logs


def test_feedback_on_a_streamed_completion_through_the_sdk(client, stack):
    """The id the SDK sees on a streamed completion is the one `/v1/feedback` takes."""
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Rate me"}], stream=True,
        extra_headers={"X-Gateway-Conversation-Id": "sdk-conversation"},
    )
    ids = {chunk.id for chunk in stream}
    assert len(ids) == 1
    [response_id] = ids
    stack.wait_for_rows("SELECT 1 FROM accounting_usagerecord WHERE response_id = %s", (response_id,), 1)

    body = {"response_id": response_id, "rating": "up", "correction": "Rated.", "tags": ["sdk"]}
    created = client.post("/feedback", body=body, cast_to=httpx.Response)
    assert created.status_code == 201
    again = client.post("/feedback", body=body, cast_to=httpx.Response)
    assert again.status_code == 200
    read = client.get("/feedback", options={"params": {"response_id": response_id}}, cast_to=httpx.Response).json()
    assert [(e["rating"], e["correction"], e["conversation_id"]) for e in read["data"]] == [
        (1, "Rated.", "sdk-conversation")
    ]
    with pytest.raises(openai.NotFoundError) as missing:
        client.post("/feedback", body={"response_id": "chatcmpl-nope", "rating": 1}, cast_to=httpx.Response)
    assert missing.value.code == "response_not_found"
