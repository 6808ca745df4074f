"""End to end: the official anthropic SDK against the gateway's /v1/messages, over real HTTP,
for models served by the OpenAI wire format and by the Anthropic one."""

from __future__ import annotations

import anthropic
import pytest

pytestmark = pytest.mark.e2e

RECORD = "SELECT status, stream, endpoint, prompt_tokens, completion_tokens FROM accounting_usagerecord WHERE response_id = %s"


@pytest.fixture
def client(stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
def test_message(client, stack, model):
    message = client.messages.create(
        model=model, max_tokens=50, system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    [row] = stack.wait_for_rows(RECORD, (message.id,), 1)
    assert row[:3] == ("success", False, "messages")
    assert row[3:] == (message.usage.input_tokens, message.usage.output_tokens)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
def test_stream(client, stack, model):
    texts = []
    with client.messages.stream(
        model=model, max_tokens=50, messages=[{"role": "user", "content": "[[fake chunks=15]] Stream"}],
    ) as stream:
        for text in stream.text_stream:
            texts.append(text)
        final = stream.get_final_message()
    assert len(texts) >= 10 and "".join(texts) == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    [row] = stack.wait_for_rows(RECORD, (final.id,), 1)
    assert row[:3] == ("success", True, "messages") and row[4] == final.usage.output_tokens


def test_a_stream_from_anthropic_starts_with_the_providers_input_tokens(client, stack):
    """message_start carries Anthropic's own count of the prompt (the gateway's estimate, which
    frames messages differently, would be off), the same as message_delta's and the record's."""
    events = list(client.messages.create(
        model="claude-haiku-4-5", max_tokens=50, stream=True,
        messages=[{"role": "user", "content": "[[fake chunks=5]] Count my prompt, please"}],
    ))
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    [row] = stack.wait_for_rows(RECORD, (start.message.id,), 1)
    assert start.message.usage.input_tokens == delta.usage.input_tokens == row[3]


def test_max_tokens_stop_reason(client):
    message = client.messages.create(
        model="gpt-4o-mini", max_tokens=3, messages=[{"role": "user", "content": "[[fake chunks=20]] Long"}],
    )
    assert message.stop_reason == "max_tokens"


def test_count_tokens(client):
    count = client.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}])
    assert count.input_tokens > 0


def test_errors_arrive_as_the_sdks_exceptions(stack, client):
    bad = anthropic.Anthropic(base_url=stack.base_url, api_key="sk-gw-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "robot", "content": "x"}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "[[fake status=429]]"}])
