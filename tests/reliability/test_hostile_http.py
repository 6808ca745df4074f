"""Hostile and bad input over HTTP against a real gateway process (issue 10): oversized bodies,
deeply nested JSON, invalid UTF-8, absurd parameters and unknown fields. Each gets a clear 4xx in
the API's error format (OpenAI's shape, Anthropic's on /v1/messages), never a 5xx, and the gateway
process's memory stays bounded while it refuses them. Figures go to docs/reliability.md."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.reliability.hostile_stack import MAX_BODY_BYTES

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
ANTHROPIC = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_anthropic_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) >= {"type", "message"}, body
    return body["error"]


@pytest.fixture
def client(hostile_stack):
    with httpx.Client(base_url=hostile_stack.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {hostile_stack.api_key}"}) as client:
        yield client


def post_raw(client: httpx.Client, path: str, content, **headers) -> httpx.Response:
    return client.post(path, content=content, headers={"content-type": "application/json", **headers})


# --- size, nesting, encoding ------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/feedback"])
def test_a_body_over_the_limit_is_a_413(client, path):
    body = b'{"model": "gpt-4o-mini", "input": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'
    response = post_raw(client, path, body)
    if path == "/v1/messages":
        assert_anthropic_error(response, 413)
    else:
        assert_openai_error(response, 413, "request_too_large")


def test_a_chunked_body_over_the_limit_is_a_413(client):
    """No Content-Length: the limit must hold on the bytes actually read."""
    def chunks():
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(3):
            yield b"y" * MAX_BODY_BYTES
        yield b'"}]}'

    assert_openai_error(post_raw(client, "/v1/chat/completions", chunks()), 413, "request_too_large")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/messages",
                                  "/v1/messages/count_tokens", "/v1/feedback"])
def test_json_nested_100000_deep_is_a_clear_400(client, path):
    body = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = post_raw(client, path, body)
    if path.startswith("/v1/messages"):
        assert_anthropic_error(response, 400)
    else:
        assert_openai_error(response, 400)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/feedback"])
def test_invalid_utf8_is_a_clear_400(client, path):
    response = post_raw(client, path, b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}')
    if path == "/v1/messages":
        assert "UTF-8" in assert_anthropic_error(response, 400)["message"]
    else:
        assert_openai_error(response, 400)


@pytest.mark.parametrize("raw", [b"", b"   ", b"null", b"[]", b"42", b'"text"', b"{", b"{'a': 1}", b"\x00" * 64,
                                 b'{"model": NaN}', b"\xef\xbb\xbf{}"])
def test_garbage_bodies_are_a_clear_400(client, raw):
    assert_openai_error(post_raw(client, "/v1/chat/completions", raw), 400)


# --- absurd parameters ------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("max_tokens", 10**12), ("max_tokens", -1), ("max_tokens", 0), ("max_tokens", 1.5), ("max_tokens", "100"),
    ("max_completion_tokens", 10**30), ("temperature", -1), ("temperature", 1e308), ("temperature", "hot"),
    ("top_p", -0.1), ("top_p", 2), ("n", 0), ("n", 10**9), ("n", -3), ("presence_penalty", 99),
    ("seed", 2**64), ("stop", ["a"] * 50), ("user", "u" * 10_000), ("logit_bias", [1]),
    ("metadata", {str(i): "v" for i in range(100)}), ("routing", {"prefer": "fake"}), ("stream", "yes"),
    ("cache", {"ttl": -5}), ("cache", "always"),
])
def test_absurd_parameters_are_a_400_naming_them(client, field, value):
    error = assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, field: value}), 400)
    assert (error["param"] or "").split(".")[0] == field, error


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_temperature_is_a_400(client, literal):
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "temperature": ' + literal + b"}"
    assert assert_openai_error(post_raw(client, "/v1/chat/completions", body), 400)["param"] == "temperature"


def test_unknown_fields_are_refused_by_name(client):
    """docs/api.md: a field OpenAI does not document is a 400 `unknown_parameter` naming it."""
    error = assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "tempreature": 0.5}), 400,
                                "unknown_parameter")
    assert error["param"] == "tempreature"
    assert_openai_error(client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x",
                                                            "__proto__": {}}), 400, "unknown_parameter")
    assert_anthropic_error(client.post("/v1/messages", json={**ANTHROPIC, "frequency_penalty": 1}), 400)


@pytest.mark.parametrize("field, value", [("max_tokens", 10**12), ("max_tokens", -1), ("temperature", -1),
                                          ("top_p", 7), ("max_tokens", "many")])
def test_absurd_anthropic_parameters_are_a_400(client, field, value):
    assert_anthropic_error(client.post("/v1/messages", json={**ANTHROPIC, field: value}), 400)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("model", [{}, [], 7, None])
def test_a_model_that_is_not_a_string_is_a_400_on_the_anthropic_routes(client, path, model):
    """count_tokens once passed `{"model": {}}` on to routing: a 500 the schema fuzzer found."""
    assert_anthropic_error(client.post(path, json={**ANTHROPIC, "model": model}), 400)


def test_the_largest_allowed_max_tokens_is_answered_within_the_models_cap(client, hostile_stack):
    """max_tokens at the validator's ceiling: served (the fake answers a few pieces), never a 5xx;
    the budget reservation (price x max tokens) does not overflow."""
    response = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1_000_000})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0
    response = client.post("/v1/messages", json={**ANTHROPIC, "max_tokens": 1_000_000})
    assert response.status_code < 500, response.text


def test_huge_headers_and_query_strings_are_not_a_5xx(client):
    assert client.get("/v1/models", params={"x" * 100: "y" * 5000}).status_code == 200
    assert client.get("/v1/usage", params={"start": "9" * 400, "end": "-1", "group_by": "\x00"}).status_code < 500
    response = client.get("/v1/models", headers={"Authorization": "Bearer " + "k" * 6000})
    assert_openai_error(response, 401)
    assert_openai_error(client.get("/v1/models", headers={"Authorization": "Bearer sk-gw-\u00e9t\u00e9".encode()}), 401)


# --- memory ---------------------------------------------------------------------------------------------
def test_a_burst_of_oversized_bodies_keeps_memory_bounded(hostile_stack, client):
    """40 bodies of 4x the limit (160 MiB in all): the process may hold a few bodies at a time, never
    the burst. Bound: RSS grows by less than 16 x the limit (8 MiB, a few bodies' worth of
    allocator slack; the burst is 160 MiB)."""
    payload = b'{"model": "gpt-4o-mini", "input": "' + b"z" * (4 * MAX_BODY_BYTES) + b'"}'
    post_raw(client, "/v1/embeddings", payload)  # warm up whatever is allocated once
    before = hostile_stack.rss_kib()
    for _ in range(40):
        assert_openai_error(post_raw(client, "/v1/embeddings", payload), 413)
    growth = hostile_stack.rss_kib() - before
    print(f"\nRSS growth after 40 x {4 * MAX_BODY_BYTES // 1024} KiB bodies: {growth} KiB (from {before} KiB)")
    assert growth < 16 * MAX_BODY_BYTES // 1024
    assert hostile_stack.alive()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_the_peak_memory_of_one_oversized_body_is_about_its_size(hostile_stack, client, chunked):
    """daphne reads a whole request body into memory before the application runs, so the gateway
    cannot refuse earlier than that: the transient peak is about the body's size (a proxy's body
    limit bounds it in production), and it is all released after the 413."""
    size = 16 * 1024 * 1024
    body = b'{"model": "m", "input": "' + b"z" * size + b'"}'
    content = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    before = hostile_stack.rss_kib()
    peak, stop = [before], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], hostile_stack.rss_kib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert_openai_error(post_raw(client, "/v1/embeddings", content), 413)
    finally:
        stop.set()
        sampler.join()
    growth = peak[0] - before
    print(f"\npeak RSS for one {size // 2**20} MiB body ({'chunked' if chunked else 'content-length'}): "
          f"+{growth // 1024} MiB")
    assert growth < 3 * size // 1024


# --- regressions found by the schema fuzz -----------------------------------------------------------
@pytest.mark.parametrize("message", [{"role": ["user"], "content": "Hi"}, {"role": {}, "content": "Hi"},
                                     {"role": "user", "content": [{"type": {}, "text": "Hi"}]},
                                     {"role": "user", "content": [{"type": ["text"], "text": "Hi"}]}])
def test_a_list_or_object_role_or_part_type_is_a_400(client, message):
    """`x in set` with an unhashable x raised TypeError: a 500."""
    assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "messages": [message]}), 400)


def test_a_wrong_method_on_the_anthropic_routes_answers_in_anthropic_shape(client):
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        assert_anthropic_error(client.request("TRACE", path), 405)


def test_a_failed_csrf_check_on_an_api_route_answers_json(client):
    """An unknown /v1/ route is not CSRF-exempt: Django's HTML 403 page was the answer to a PUT
    carrying a session cookie; now the API's error shape."""
    client.cookies.set("sessionid", "not-a-session")
    response = client.put("/v1/providers/%C2%84", json={})
    assert response.status_code in (403, 404), response.text[:200]
    assert_openai_error(response, response.status_code)
