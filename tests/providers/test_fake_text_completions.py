"""The fake provider's OpenAI legacy text completions (`providers/fake/openai_text.py`), in process
through httpx.ASGITransport: OpenAI's `text_completion` object and stream, its legacy logprobs,
several prompts, `best_of` billed whole, and a chat model refused as OpenAI refuses it.
Reference: https://platform.openai.com/docs/api-reference/completions/object"""

from __future__ import annotations

import json

import httpx
import pytest

from providers.fake.app import build_app
from providers.fake.content import tokens_count

AUTH = {"authorization": "Bearer sk-fake"}


@pytest.fixture
async def client():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app()), base_url="http://fake") as c:
        yield c


async def complete(client, **body) -> httpx.Response:
    return await client.post("/v1/completions", json={"model": "gpt-3.5-turbo-instruct", **body}, headers=AUTH)


async def test_a_text_completion_is_openais_object_with_its_logprobs(client):
    body = (await complete(client, prompt=["One", "Two"], n=2, max_tokens=3, echo=True, logprobs=2)).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and "service_tier" not in body
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2, 3]
    for choice in body["choices"]:
        prompt = "One" if choice["index"] < 2 else "Two"
        logprobs = choice["logprobs"]
        assert choice["text"].startswith(prompt) and choice["finish_reason"] == "length"
        assert "".join(logprobs["tokens"]) == choice["text"]
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        assert all(-3 <= value <= 0 for value in logprobs["token_logprobs"][1:])
        assert all(len(top) == 3 and token in top for token, top in zip(logprobs["tokens"][1:], logprobs["top_logprobs"][1:]))
        assert logprobs["text_offset"] == [sum(map(len, logprobs["tokens"][:i])) for i in range(len(logprobs["tokens"]))]
    prompts = tokens_count(text="One") + tokens_count(text="Two")
    assert body["usage"] == {"prompt_tokens": prompts, "completion_tokens": 4 * 3, "total_tokens": prompts + 12}


async def test_best_of_is_generated_and_billed_whole_and_the_first_n_returned(client):
    body = (await complete(client, prompt="Pick", max_tokens=2, best_of=3)).json()
    assert len(body["choices"]) == 1 and body["usage"]["completion_tokens"] == 3 * 2
    assert (await complete(client, prompt="Pick", best_of=2, stream=True)).status_code == 400


async def test_the_stream_is_the_plain_answer_in_pieces_then_usage_and_done(client):
    plain = (await complete(client, prompt="Tell me", max_tokens=4)).json()
    streamed = await complete(client, prompt="Tell me", max_tokens=4, stream=True, logprobs=0,
                              stream_options={"include_usage": True})
    events = [block.removeprefix("data: ") for block in streamed.text.split("\n\n") if block]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(c["text"] for chunk in chunks for c in chunk["choices"]) == plain["choices"][0]["text"]
    pieces = [c for chunk in chunks for c in chunk["choices"] if c["text"]]
    assert all(c["logprobs"]["tokens"] == [c["text"]] and len(c["logprobs"]["top_logprobs"][0]) == 1 for c in pieces)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


async def test_a_suffix_changes_the_answer(client):
    plain = (await complete(client, prompt="Fill", max_tokens=4)).json()["choices"][0]["text"]
    inserted = (await complete(client, prompt="Fill", max_tokens=4, suffix=" end.")).json()["choices"][0]["text"]
    assert plain != inserted


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "gpt-4o-mini", "prompt": "Hi"}, 404, "model"),
    ({"prompt": 7}, 400, "prompt"),
    ({"prompt": "Hi", "logprobs": 6}, 400, "logprobs"),
    ({"prompt": "Hi", "n": 3, "best_of": 2}, 400, "best_of"),
    ({"prompt": "Hi", "suffix": 1}, 400, "suffix"),
])
async def test_what_openai_refuses_is_its_error(client, body, status, param):
    response = await client.post("/v1/completions", json={"model": "gpt-3.5-turbo-instruct", **body}, headers=AUTH)
    assert response.status_code == status and response.json()["error"]["param"] == param
