"""Property tests of the request validators (issue 10, hostile input): whatever JSON a client sends,
each validator either returns a payload or raises a `GatewayError` with a 4xx status and a body in
the documented error shape. Any other exception would reach the client as a 500.

The validators are pure functions, so they are called directly: thousands of bodies in seconds.
Bodies are arbitrary JSON, and JSON shaped like the real request (right keys, wrong values), which
reaches the checks deep inside messages, tools and options.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caching.keys import cache_options_parse
from feedback.services import submission_parse
from kernel.errors import GatewayError
from routing.anthropic_format import REQUEST_KEYS, openai_payload
from routing.completions_format import completion_chat_payload
from routing.validation import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    EMBEDDING_FIELDS,
    chat_request_validate,
    embeddings_request_validate,
    json_body,
)

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.sampled_from(
    [10**12, -1, 0, 2**63, -(2**63) - 1, 1e308, float("nan"), float("inf"), "", " ", "\x00", "up", "down"]
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def shaped(fields: set[str]) -> st.SearchStrategy[dict]:
    """Objects with the validator's own keys (plus an occasional stranger) and arbitrary values."""
    keys = st.sampled_from(sorted(fields)) | st.text(max_size=12)
    return st.dictionaries(keys, json_values, max_size=8)


messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "robot"]) | json_values},
        optional={
            "content": json_values | st.lists(
                st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "image", "tool_result",
                                                                "tool_use"]) | json_values},
                                      optional={"text": json_values, "image_url": json_values,
                                                "source": json_values}),
                max_size=3,
            ),
            "tool_calls": json_values,
            "function_call": json_values,
        },
    ),
    max_size=3,
)


def with_messages(fields: set[str]) -> st.SearchStrategy[dict]:
    return st.builds(lambda body, msgs, model: {**body, "messages": msgs, "model": model},
                     shaped(fields), messages, json_values | st.just("gpt-4o-mini"))


def assert_clear_error(call, *args, **kwargs):
    """Either a value, or a GatewayError whose status is 4xx and whose body is the documented shape."""
    try:
        return call(*args, **kwargs)
    except GatewayError as exc:
        assert 400 <= exc.status < 500, f"{type(exc).__name__} {exc.status}: {exc.message}"
        error = exc.as_body()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
        json.dumps(exc.as_body())  # serialisable as it is sent
        return None


@FUZZ
@given(st.one_of(json_values, shaped(CHAT_FIELDS), with_messages(CHAT_FIELDS)))
def test_chat_validator_answers_4xx_or_a_payload(body):
    if not isinstance(body, dict):
        body = {"model": "gpt-4o-mini", "messages": body}
    payload = assert_clear_error(chat_request_validate, body)
    if payload is not None:
        json.dumps(payload, allow_nan=False)  # what is forwarded upstream is plain, finite JSON
        assert not set(payload) & {"metadata", "routing", "cache"}


@FUZZ
@given(st.one_of(shaped(EMBEDDING_FIELDS), st.builds(lambda b, i: {**b, "model": "m", "input": i},
                                                     shaped(EMBEDDING_FIELDS), json_values)))
def test_embeddings_validator_answers_4xx_or_a_payload(body):
    assert_clear_error(embeddings_request_validate, body)


@FUZZ
@given(st.one_of(shaped(REQUEST_KEYS), with_messages(REQUEST_KEYS),
                 st.builds(lambda b: {**b, "max_tokens": 16}, with_messages(REQUEST_KEYS))))
def test_anthropic_translation_then_validation_answers_4xx_or_a_payload(body):
    """The Messages API translates, then runs the chat validator: both steps, as the view does."""
    payload = assert_clear_error(openai_payload, body)
    if payload is not None:
        assert_clear_error(chat_request_validate, payload)


@FUZZ
@given(st.one_of(shaped(COMPLETION_FIELDS),
                 st.builds(lambda b, p: {**b, "model": "m", "prompt": p}, shaped(COMPLETION_FIELDS), json_values)))
def test_completions_translation_then_validation_answers_4xx_or_a_payload(body):
    """/v1/completions checks and translates, then runs the chat validator: both steps, as the view does."""
    translated = assert_clear_error(completion_chat_payload, body)
    if translated is not None:
        assert_clear_error(chat_request_validate, translated[0])


FEEDBACK_KEYS = {"response_id", "conversation_id", "source", "metrics", "rating", "score", "correction",
                 "tags", "comment", "metadata"}


@FUZZ
@given(st.one_of(json_values, shaped(FEEDBACK_KEYS)))
def test_feedback_submission_parser_answers_4xx_or_a_submission(body):
    assert_clear_error(submission_parse, body)


@FUZZ
@given(json_values, st.text(max_size=40) | st.sampled_from(["max-age=10", "no-store", "max-age=\"x\"",
                                                            "max-age=99999999999999999999", "max-age=-5"]))
def test_cache_options_answer_4xx_or_options(value, header):
    assert_clear_error(cache_options_parse, body={"cache": value}, headers={"cache-control": header})
    assert_clear_error(cache_options_parse, body={}, headers={"cache-control": header})


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_json_body_decoder_answers_4xx_or_an_object(raw):
    body = assert_clear_error(json_body, raw, max_bytes=100)
    assert body is None or isinstance(body, dict)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_a_clear_400(depth):
    with pytest.raises(GatewayError) as caught:
        json_body(b"[" * depth + b"]" * depth, max_bytes=10**7)
    assert caught.value.status == 400
