"""Legacy text completions (`POST /v1/completions`) through the chat pipeline, and back.

A completions request becomes a chat request of one user message (the prompt), so that every
provider serves it, OpenAI-type and chat-only alike, with the same routing, limits, budgets, cache,
guardrails and record as a chat completion; the answer (plain or streamed) goes back as OpenAI's
`text_completion` object. What chat cannot honour is refused with a 400 naming it
(`validation.completions_request_validate`): `suffix`, `logprobs`, `best_of` past `n`, more than one
prompt. `echo` is honoured: the prompt comes back in front of each choice's text.
Reference: https://platform.openai.com/docs/api-reference/completions
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from routing import validation

COMPLETION_ONLY_FIELDS = ("prompt", "suffix", "echo", "logprobs", "best_of")


@dataclass
class CompletionRequest:
    """What the door keeps of a completions body once it is a chat request: the text to echo."""

    echo: str = ""

    def chat_payload(self, body: dict) -> dict:
        """The chat request of a completions body (checked first)."""
        body = validation.completions_request_validate(body)
        payload = {key: value for key, value in body.items() if key not in COMPLETION_ONLY_FIELDS}
        payload["messages"] = [{"role": "user", "content": body["prompt"]}]
        if payload.get("max_tokens") is None:
            payload["max_tokens"] = validation.COMPLETION_DEFAULT_MAX_TOKENS
        if body.get("echo"):
            self.echo = body["prompt"]
        return payload

    def text_completion(self, answer: dict) -> dict:
        """A chat completion's body as a `text_completion` object."""
        choices = []
        for position, choice in enumerate(answer.get("choices") or ()):
            message = choice.get("message") or {}
            choices.append({
                "text": self.echo + (message.get("content") or ""),
                "index": choice.get("index", position),
                "logprobs": None,
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

    async def text_completion_chunks(self, chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
        """Chat chunks as `text_completion` chunks (OpenAI's stream of completions: the same object,
        each choice's `text` a piece); an error chunk passes as it is; closing this closes `chunks`
        (and records the request)."""
        echoed: set[int] = set()
        try:
            async for chunk in chunks:
                if "error" in chunk:
                    yield chunk
                    return
                choices = []
                for choice in chunk.get("choices") or ():
                    index = choice.get("index", 0)
                    text = (choice.get("delta") or {}).get("content") or ""
                    if self.echo and index not in echoed:
                        echoed.add(index)
                        text = self.echo + text
                    if text or choice.get("finish_reason"):
                        choices.append({"text": text, "index": index, "logprobs": None,
                                        "finish_reason": choice.get("finish_reason")})
                if not choices and not chunk.get("usage"):
                    continue  # a role or tool-call delta: nothing of a text completion
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
