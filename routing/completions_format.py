"""Legacy text completions (`POST /v1/completions`): the door's translation to the chat pipeline's
request, and of its chat-shaped answers back to OpenAI's `text_completion` objects.

A completions request becomes a chat request of one user message per prompt, so that it gets the
same routing, limits, budgets, cache, guardrails and record as a chat completion; its own fields
(`suffix`, `echo`, `logprobs`, `best_of`) ride along for the adapter, which passes the request
through to a completion model's `/completions` or translates it to chat for a chat model
(`providers/adapters/text_completions.py`). Either way the answer comes back in the chat shape,
each choice's `logprobs` as the provider gave them, and leaves here as a `text_completion`.
Reference: https://platform.openai.com/docs/api-reference/completions
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from routing import validation

COMPLETION_ONLY_FIELDS = ("prompt", "suffix", "echo", "logprobs", "best_of")


def completion_chat_payload(body: dict) -> tuple[dict, dict]:
    """(the chat request of a completions body, checked first; its text completion's own fields)."""
    body = validation.completions_request_validate(body)
    payload = {key: value for key, value in body.items() if key not in COMPLETION_ONLY_FIELDS}
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    payload["messages"] = [{"role": "user", "content": prompt} for prompt in prompts]
    if payload.get("max_tokens") is None:
        payload["max_tokens"] = validation.COMPLETION_DEFAULT_MAX_TOKENS
    own = {name: body[name] for name in ("suffix", "echo", "logprobs", "best_of") if body.get(name) is not None}
    return payload, own


def text_completion(answer: dict) -> dict:
    """A chat-shaped answer as a `text_completion` object."""
    choices = []
    for position, choice in enumerate(answer.get("choices") or ()):
        message = choice.get("message") or {}
        choices.append({
            "text": message.get("content") or "",
            "index": choice.get("index", position),
            "logprobs": choice.get("logprobs"),
            "finish_reason": choice.get("finish_reason"),
        })
    completion = {
        "id": answer.get("id"),
        "object": "text_completion",
        "created": answer.get("created") or int(time.time()),
        "model": answer.get("model", ""),
        "choices": choices,
    }
    if answer.get("usage") is not None:
        completion["usage"] = answer["usage"]
    if answer.get("system_fingerprint"):
        completion["system_fingerprint"] = answer["system_fingerprint"]
    return completion


async def text_completion_chunks(chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """Chat-shaped chunks as `text_completion` chunks (OpenAI's stream of completions: the same
    object, each choice's `text` a piece); an error chunk passes as it is; closing this closes
    `chunks` (and records the request)."""
    try:
        async for chunk in chunks:
            if "error" in chunk:
                yield chunk
                return
            choices = []
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content") or ""
                if text or choice.get("finish_reason") or choice.get("logprobs"):
                    choices.append({"text": text, "index": choice.get("index", 0),
                                    "logprobs": choice.get("logprobs"),
                                    "finish_reason": choice.get("finish_reason")})
            if not choices and not chunk.get("usage"):
                continue  # a role delta: nothing of a text completion
            completion = {
                "id": chunk.get("id"), "object": "text_completion",
                "created": chunk.get("created") or int(time.time()), "model": chunk.get("model", ""),
                "choices": choices,
            }
            if "usage" in chunk:
                completion["usage"] = chunk["usage"]
            yield completion
    finally:
        await chunks.aclose()
