"""The stream contract's two additions (providers/adapters/base.py): `usage_so_far`, the counts a
provider has reported before its stream ends, and `opened`, the moment the provider accepted the
request.

Each adapter streams from the real fake provider server (`fake_provider_url`) through the client
production uses; the fake's ledger (`GET /_fake/stats`) says what it billed. The moment `opened`
is called is checked against the scripted provider (`upstream.py`), which can answer a status
and then say nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from providers.adapters import ADAPTERS
from providers.adapters.base import USAGE_SO_FAR, Adapter, Target
from providers.transport import UpstreamClient
from kernel.errors import ProviderError
from tests.providers.upstream import UPSTREAM, refused_url

SSE = {"content-type": "text/event-stream"}
# (wire type, api_base below the fake's root, upstream model)
WIRES = {
    "openai": ("/v1", "gpt-4o-mini"),
    "azure": ("", "gpt-4o-mini"),
    "anthropic": ("", "claude-sonnet-4-6"),
    "gemini": ("", "gemini-2.5-flash"),
    "cohere": ("", "command-a-03-2025"),
}
# Only Anthropic and Gemini report counts before the end of a stream; the others in their last
# event (Cohere's message-end, OpenAI's include_usage chunk).
EARLY = {"anthropic", "gemini"}


def fake_target(base_url: str, wire: str) -> Target:
    path, model = WIRES[wire]
    return Target(provider_id=1, provider_name=f"fake-{wire}", wire_type=wire,
                  api_base=base_url + path, upstream_model=model, api_key="sk-fake-key-0001")


def payload(directive: str = "") -> dict:
    text = "Tell me about rivers" + (f" [[fake {directive}]]" if directive else "")
    return {"messages": [{"role": "user", "content": text}], "stream": True}


async def ledger(base_url: str) -> dict:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{base_url}/_fake/stats")).json()["usage"]


async def drain(adapter: Adapter, target: Target, body: dict, opened=None) -> tuple[list[dict], ProviderError | None]:
    chunks: list[dict] = []
    try:
        async for chunk in adapter.chat_stream(body, target, opened=opened):
            chunks.append(chunk)
    except ProviderError as exc:
        return chunks, exc
    return chunks, None


def reported(chunks: list[dict]) -> list[dict]:
    return [chunk[USAGE_SO_FAR] for chunk in chunks if USAGE_SO_FAR in chunk]


def text_of(chunks: list[dict]) -> str:
    return "".join(choice["delta"].get("content") or ""
                   for chunk in chunks for choice in chunk["choices"])


@pytest.mark.parametrize("wire", sorted(WIRES))
async def test_a_stream_cut_by_the_provider_yields_the_counts_it_had(fake_provider_url, client, wire):
    """Cut after 3 of 8 content events: Anthropic reported the prompt in message_start, Gemini the
    prompt and the 3 tokens so far (each of the fake's pieces is one token); the others nothing."""
    target = fake_target(fake_provider_url, wire)
    before = await ledger(fake_provider_url)

    chunks, error = await drain(ADAPTERS[wire](client), target, payload("chunks=8 disconnect_after=3"))

    billed_prompt = (await ledger(fake_provider_url))["prompt_tokens"] - before["prompt_tokens"]
    assert error is not None and error.error_class == "connection"
    assert not any(chunk.get("usage") for chunk in chunks)  # no final usage: the stream was cut
    counts = reported(chunks)
    if wire == "anthropic":
        assert counts == [{"prompt_tokens": billed_prompt}]
        assert USAGE_SO_FAR in chunks[0] and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    elif wire == "gemini":
        assert len(counts) == 3  # one per event, each on the chunk its event produced
        assert counts[-1] == {"prompt_tokens": billed_prompt, "completion_tokens": 3}
        assert [count["completion_tokens"] for count in counts] == [1, 2, 3]
        assert len(text_of(chunks).split()) == 3
    else:
        assert counts == []
    assert billed_prompt > 0


@pytest.mark.parametrize("wire", sorted(EARLY))
async def test_the_last_counts_so_far_agree_with_the_final_usage(fake_provider_url, client, wire):
    target = fake_target(fake_provider_url, wire)
    before = await ledger(fake_provider_url)

    chunks, error = await drain(ADAPTERS[wire](client), target, payload("chunks=5"))

    after = await ledger(fake_provider_url)
    assert error is None
    final = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and USAGE_SO_FAR not in chunks[-1]
    assert final == {"prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
                     "completion_tokens": after["completion_tokens"] - before["completion_tokens"],
                     "total_tokens": final["prompt_tokens"] + final["completion_tokens"]}
    counts = reported(chunks)
    assert counts[-1] == {"prompt_tokens": final["prompt_tokens"],
                          "completion_tokens": final["completion_tokens"]}
    # The finish chunk carries the last counts; Anthropic's role chunk carried the prompt alone.
    assert USAGE_SO_FAR in chunks[-2] and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    if wire == "anthropic":
        assert counts == [{"prompt_tokens": final["prompt_tokens"]}, counts[-1]]


@pytest.mark.parametrize("wire", sorted(EARLY))
async def test_a_stream_without_usage_reports_no_counts(fake_provider_url, client, wire):
    chunks, error = await drain(ADAPTERS[wire](client), fake_target(fake_provider_url, wire),
                                payload("chunks=4 no_usage"))

    assert error is None
    assert reported(chunks) == [] and not any(chunk.get("usage") for chunk in chunks)


# --- opened -----------------------------------------------------------------------------------


class Opened:
    """An `opened` callback that counts its calls and lets a test await the first."""

    def __init__(self) -> None:
        self.calls = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()


@pytest.mark.parametrize("wire", sorted(WIRES))
async def test_opened_is_called_once_for_a_stream_the_provider_accepted(fake_provider_url, client, wire):
    opened = Opened()
    seen_at_first_chunk: list[int] = []

    stream = ADAPTERS[wire](client).chat_stream(payload("chunks=3"), fake_target(fake_provider_url, wire),
                                                opened=opened)
    async for chunk in stream:
        seen_at_first_chunk.append(opened.calls)

    assert opened.calls == 1
    assert seen_at_first_chunk[0] == 1


@pytest.mark.parametrize("wire", sorted(WIRES))
@pytest.mark.parametrize("status", [400, 429, 500, 503])
async def test_opened_is_never_called_for_an_error_status(fake_provider_url, client, wire, status):
    opened = Opened()

    chunks, error = await drain(ADAPTERS[wire](client), fake_target(fake_provider_url, wire),
                                payload(f"status={status}"), opened=opened)

    assert chunks == [] and error is not None and error.upstream_status == status
    assert opened.calls == 0


@pytest.mark.parametrize("wire", sorted(WIRES))
async def test_opened_is_never_called_when_the_connection_fails(client, wire):
    opened = Opened()

    chunks, error = await drain(ADAPTERS[wire](client), fake_target(refused_url(), wire),
                                payload(), opened=opened)

    assert chunks == [] and error is not None and error.error_class == "connection"
    assert opened.calls == 0


@pytest.mark.parametrize(
    ("wire", "path"),
    [("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")],  # the two chat_stream
)
async def test_opened_comes_with_the_status_before_any_event(upstream, client: UpstreamClient, wire, path):
    """The provider answers 200 and then says nothing: `opened` is called, no chunk has come."""
    upstream.post(f"{UPSTREAM.url}{path}").respond(200, headers=SSE, stall=True)
    target = dataclasses.replace(fake_target(UPSTREAM.url, wire), api_base=UPSTREAM.url + WIRES[wire][0])
    opened = Opened()
    stream = ADAPTERS[wire](client).chat_stream(payload(), target, opened=opened)
    first = asyncio.ensure_future(anext(stream))
    try:
        await asyncio.wait_for(opened.event.wait(), timeout=5)
        assert opened.calls == 1
        assert not first.done()  # still waiting for the first event
    finally:
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await stream.aclose()
