"""OpenAI's legacy text completions (`POST /v1/completions`), as the adapters carry them.

The gateway serves a text completion as a chat request (one user message per prompt, so that
guardrails, token counts, cache keys and records read it like any chat request) whose payload
also holds, under `TEXT_COMPLETION`, what only a text completion has: `suffix`, `echo`,
`logprobs`, `best_of`. An adapter sends it one of two ways (`Adapter.chat`, `Adapter.chat_stream`):

- to a completion model (`Target.mode == "completion"`, such as gpt-3.5-turbo-instruct), passed
  through to the vendor's own `/completions` (`Adapter.text_completion_request`: OpenAI and its
  family), the answer read back into the chat shape with each choice's `logprobs` as the vendor
  gave them (`completion_as_chat`, `completion_chunk_as_chat`);
- to a chat model, translated: the chat call itself, with the prompt echoed in front of each
  choice's text when `echo` asks for it (`echoed`, `echoed_chunks`). What a chat call cannot
  honour is refused before routing (`native_param`).

The door (`routing.completions_format`) turns the chat-shaped answer back into `text_completion`
objects. Reference: https://platform.openai.com/docs/api-reference/completions
"""

from __future__ import annotations

from collections.abc import AsyncIterator

# The payload key of a text completion's own fields; never sent to a vendor as it is.
TEXT_COMPLETION = "text_completion"


def native_param(payload: dict) -> str | None:
    """The first parameter of a text completion (a payload holding `TEXT_COMPLETION`) that only a
    completion model can honour, or None: an insertion `suffix`, `logprobs`, `best_of` past `n`,
    several prompts."""
    legacy = payload.get(TEXT_COMPLETION) or {}
    if legacy.get("suffix"):
        return "suffix"
    if legacy.get("logprobs") is not None:
        return "logprobs"
    if legacy.get("best_of") not in (None, payload.get("n") or 1):
        return "best_of"
    if len(payload.get("messages") or ()) > 1:
        return "prompt"
    return None


def text_completion_split(payload: dict) -> tuple[dict, dict | None]:
    """(the chat payload, the text completion's own fields or None for a chat request)."""
    if TEXT_COMPLETION not in payload:
        return payload, None
    legacy = payload[TEXT_COMPLETION]
    return {key: value for key, value in payload.items() if key != TEXT_COMPLETION}, legacy


def prompts_of(payload: dict) -> list[str]:
    """The prompts of a text completion: its user messages' text, as guardrails left them."""
    return [message.get("content") or "" for message in payload.get("messages") or ()]


def text_completion_body(payload: dict, legacy: dict) -> dict:
    """OpenAI's `/completions` body for a text completion held as a chat payload."""
    body = {key: value for key, value in payload.items() if key != "messages"}
    prompts = prompts_of(payload)
    body["prompt"] = prompts[0] if len(prompts) == 1 else prompts
    for name in ("suffix", "echo", "logprobs", "best_of"):
        if legacy.get(name) is not None:
            body[name] = legacy[name]
    return body


def completion_as_chat(data: dict) -> dict:
    """A `text_completion` body in the chat shape: each choice's `text` as its message's content,
    its `logprobs` (OpenAI's legacy shape) kept as they are."""
    body = {key: value for key, value in data.items() if key != "choices"}
    body["object"] = "chat.completion"
    body["choices"] = [
        {
            "index": choice.get("index", position),
            "message": {"role": "assistant", "content": choice.get("text") or ""},
            "logprobs": choice.get("logprobs"),
            "finish_reason": choice.get("finish_reason"),
        }
        for position, choice in enumerate(data.get("choices") or ())
        if isinstance(choice, dict)
    ]
    return body


def completion_chunk_as_chat(chunk: dict) -> dict:
    """A `text_completion` stream chunk in the chat chunk shape (a choice's `text` as its delta's
    content); a usage-only chunk (`choices: []`) stays as it is."""
    chunk = dict(chunk)
    chunk["object"] = "chat.completion.chunk"
    chunk["choices"] = [
        {
            "index": choice.get("index", 0),
            "delta": {"content": choice["text"]} if choice.get("text") else {},
            "logprobs": choice.get("logprobs"),
            "finish_reason": choice.get("finish_reason"),
        }
        for choice in chunk.get("choices") or ()
        if isinstance(choice, dict)
    ]
    return chunk


def echoed(body: dict, legacy: dict | None, payload: dict) -> dict:
    """A chat answer with the prompt in front of each choice's content when `echo` asks for it."""
    if not legacy or not legacy.get("echo"):
        return body
    [prompt] = prompts_of(payload)
    for choice in body.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            message["content"] = prompt + (message.get("content") or "")
    return body


def echoed_chunks(chunks: AsyncIterator[dict], legacy: dict | None, payload: dict) -> AsyncIterator[dict]:
    """Chat chunks with the prompt in front of each choice's first piece when `echo` asks for it."""
    if not legacy or not legacy.get("echo"):
        return chunks
    [prompt] = prompts_of(payload)
    return _echoed_chunks(chunks, prompt)


async def _echoed_chunks(chunks: AsyncIterator[dict], prompt: str) -> AsyncIterator[dict]:
    echoed_choices: set[int] = set()
    async for chunk in chunks:
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            if index not in echoed_choices:
                echoed_choices.add(index)
                delta = choice.setdefault("delta", {})
                delta["content"] = prompt + (delta.get("content") or "")
        yield chunk
