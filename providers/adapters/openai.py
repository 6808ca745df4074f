"""OpenAI's chat completions and embeddings, and every service that speaks them.

Covers OpenAI itself and the compatible family reached through `api_base` (Mistral, OpenRouter,
Groq, Together, vLLM, Ollama). Requests pass through with the upstream model id swapped in; legacy text completions for a
completion model go to `/completions` (`providers/adapters/text_completions.py`).
Also OpenAI's media endpoints (images, audio, moderations) and the rerank route of
OpenAI-compatible rerank servers (Jina, vLLM: `{api_base}/rerank`; TEI's own shape is `tei.py`'s).

Reference: https://platform.openai.com/docs/api-reference/chat,
https://platform.openai.com/docs/api-reference/images, https://platform.openai.com/docs/api-reference/audio,
https://platform.openai.com/docs/api-reference/moderations, https://jina.ai/reranker/,
https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html (re-rank API)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

from kernel.errors import ProviderError
from providers.adapters.base import (
    Adapter,
    AudioUpload,
    ChatResult,
    MediaResult,
    Units,
    SSEEvent,
    Target,
    UpstreamRequest,
    Usage,
)
from providers.adapters.media import (
    DEFAULT_IMAGE_SIZE,
    audio_units,
    multipart_encode,
    rerank_answer,
    rerank_results,
    searches,
)
from providers.adapters.openai_family import quirks_for
from providers.adapters.text_completions import (
    completion_as_chat,
    completion_chunk_as_chat,
    text_completion_body,
)

# The `response_format`s of a transcription whose answer is JSON; the others are text.
_JSON_TRANSCRIPTS = {"json", "verbose_json", "diarized_json"}
_TEXT_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}

# OpenAI error codes that name a class of their own (https://platform.openai.com/docs/guides/error-codes).
_CODE_CLASSES = {
    "context_length_exceeded": "context_length_exceeded",
    "string_above_max_length": "context_length_exceeded",
    "content_filter": "content_filtered",
    "content_policy_violation": "content_filtered",
    "rate_limit_exceeded": "rate_limited",
    "insufficient_quota": "rate_limited",
    "invalid_api_key": "auth",
}


class OpenAIAdapter(Adapter):
    wire_type = "openai"
    supports_embeddings = True

    def _headers(self, target: Target) -> dict[str, str]:
        return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}

    def _url(self, target: Target, path: str) -> str:
        return f"{target.api_base.rstrip('/')}/{path}"

    def unsupported(self, target: Target) -> frozenset[str]:
        return target.unsupported_params | quirks_for(target.api_base).unsupported

    def chat_request(self, payload: dict, target: Target) -> UpstreamRequest:
        quirks = quirks_for(target.api_base)
        body = {quirks.renamed.get(key, key): value for key, value in payload.items()}
        body["model"] = target.upstream_model
        if body.get("stream") and quirks.stream_options:
            # Always ask for usage: provider-reported tokens are the truth we bill on. The
            # pipeline forwards the usage chunk only to clients that asked for it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        elif not quirks.stream_options:
            body.pop("stream_options", None)
        return UpstreamRequest(
            url=self._url(target, "chat/completions"), json=body, headers=self._headers(target)
        )

    def chat_response(self, data: dict, target: Target) -> ChatResult:
        if not isinstance(data.get("choices"), list):
            raise self.malformed(target, "a chat completion (no choices)")
        return ChatResult(body=data, usage=Usage.from_openai(data.get("usage")))

    async def chat_stream_chunks(
        self, events: AsyncIterator[SSEEvent], target: Target
    ) -> AsyncIterator[dict]:
        async for chunk in self._stream_objects(events, target):
            yield chunk

    async def _stream_objects(self, events: AsyncIterator[SSEEvent], target: Target) -> AsyncIterator[dict]:
        """The `data:` objects of an OpenAI stream (chat or text completion) up to `[DONE]`."""
        async for event in events:
            if event.data.strip() == "[DONE]":
                return
            chunk = self.load_event(event, target)
            if "error" in chunk:
                raise self._stream_error(chunk["error"], target)
            yield _usage_lifted(chunk, quirks_for(target.api_base).usage_container)

    def text_completion_request(self, payload: dict, legacy: dict, target: Target) -> UpstreamRequest:
        """`POST /completions` (https://platform.openai.com/docs/api-reference/completions/create)."""
        request = self.chat_request(payload, target)  # the model, renames and stream usage as for chat
        body = text_completion_body(request.json, legacy)
        return UpstreamRequest(url=self._url(target, "completions"), json=body, headers=request.headers)

    def text_completion_response(self, data: dict, target: Target) -> ChatResult:
        if not isinstance(data.get("choices"), list):
            raise self.malformed(target, "a text completion (no choices)")
        return ChatResult(body=completion_as_chat(data), usage=Usage.from_openai(data.get("usage")))

    async def text_completion_stream_chunks(
        self, events: AsyncIterator[SSEEvent], target: Target
    ) -> AsyncIterator[dict]:
        async for chunk in self._stream_objects(events, target):
            yield completion_chunk_as_chat(chunk)

    def embeddings_request(self, payload: dict, target: Target) -> UpstreamRequest:
        return UpstreamRequest(
            url=self._url(target, "embeddings"),
            json={**payload, "model": target.upstream_model},
            headers=self._headers(target),
        )

    def embeddings_response(self, data: dict, target: Target) -> ChatResult:
        if not isinstance(data.get("data"), list):
            raise self.malformed(target, "an embeddings response (no data)")
        usage = data.get("usage") or {}
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return ChatResult(
            body=data,
            usage=Usage(prompt_tokens=int(tokens), completion_tokens=0) if tokens is not None else None,
        )

    async def images(self, payload: dict, target: Target) -> MediaResult:
        request = UpstreamRequest(
            url=self._url(target, "images/generations"),
            json={**payload, "model": target.upstream_model}, headers=self._headers(target),
        )
        data = await self._send_json(request, target)
        if not isinstance(data.get("data"), list):
            raise self.malformed(target, "an images response (no data)")
        # OpenAI's default size is 1024x1024 (gpt-image-1's `auto` is priced as that too).
        units = Units(kind="image", count=Decimal(len(data["data"])), size=payload.get("size") or DEFAULT_IMAGE_SIZE,
                      quality=payload.get("quality") or "")
        return MediaResult(body=data, usage=_image_usage(data.get("usage")), units=units)

    async def transcription(self, upload: AudioUpload, target: Target, *, translate: bool) -> MediaResult:
        body, content_type = multipart_encode(upload, model=target.upstream_model)
        path = "audio/translations" if translate else "audio/transcriptions"
        request = UpstreamRequest(url=self._url(target, path), headers=self._headers(target),
                                  content=body, content_type=content_type)
        response = await self._send_read(request, target)
        answer_format = str(upload.fields.get("response_format") or "json")
        if answer_format not in _JSON_TRANSCRIPTS:
            return MediaResult(text=response.text, content_type=_TEXT_TYPES.get(answer_format, "text/plain"),
                               units=audio_units(None, upload))
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise self.malformed(target, "a transcription (no text)")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        seconds = usage.get("seconds") if usage.get("type") == "duration" else data.get("duration")
        tokens = None
        if usage.get("type") == "tokens":
            tokens = Usage(prompt_tokens=int(usage.get("input_tokens") or 0),
                           completion_tokens=int(usage.get("output_tokens") or 0))
        return MediaResult(body=data, usage=tokens, units=audio_units(seconds, upload))

    async def speech(self, payload: dict, target: Target) -> MediaResult:
        request = UpstreamRequest(
            url=self._url(target, "audio/speech"),
            json={**payload, "model": target.upstream_model}, headers=self._headers(target),
        )
        response, chunks = await self._send_streamed(request, target)
        return MediaResult(
            chunks=chunks, content_type=response.headers.get("content-type") or "application/octet-stream",
            units=Units(kind="character", count=Decimal(len(payload["input"]))),
        )

    async def moderations(self, payload: dict, target: Target) -> MediaResult:
        request = UpstreamRequest(
            url=self._url(target, "moderations"),
            json={**payload, "model": target.upstream_model}, headers=self._headers(target),
        )
        data = await self._send_json(request, target)
        if not isinstance(data.get("results"), list):
            raise self.malformed(target, "a moderation (no results)")
        return MediaResult(body=data)

    async def rerank(self, payload: dict, target: Target) -> MediaResult:
        """Jina's and vLLM's `POST /rerank` (`query`, `documents`, `top_n`); results become
        Cohere's (`media.rerank_results`). TEI's native shape is the `tei` type's (`tei.py`)."""
        body = {"model": target.upstream_model, "query": payload["query"], "documents": payload["documents"]}
        if payload.get("top_n") is not None:
            body["top_n"] = payload["top_n"]
        request = UpstreamRequest(url=self._url(target, "rerank"), json=body, headers=self._headers(target))
        data = await self._send_json(request, target)
        count = len(payload["documents"])
        results = rerank_results(data, documents=count)
        if results is None:
            raise self.malformed(target, "a rerank answer (no results)")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        tokens = usage.get("total_tokens", usage.get("prompt_tokens"))
        found = searches(count)
        return MediaResult(
            body=rerank_answer(results[: payload.get("top_n") or None], search_units=found,
                               response_id=str(data.get("id") or "")),
            usage=Usage(prompt_tokens=int(tokens), completion_tokens=0) if isinstance(tokens, int) else None,
            units=Units(kind="search", count=Decimal(found)),
        )

    def error_details(self, status: int, data: object) -> tuple[str | None, str]:
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            return None, str(data)[:300] if data else ""
        code = error.get("code") or error.get("type")
        return _CODE_CLASSES.get(str(code)), str(error.get("message") or "")

    def _stream_error(self, error: object, target: Target) -> ProviderError:
        error_class, message = self.error_details(500, {"error": error})
        return ProviderError(
            f"Provider '{target.provider_name}' failed mid-stream: {message or 'error event'}",
            error_class=error_class or "upstream_server",
            provider=target.provider_name,
            secret=target.api_key,
        )


def _usage_lifted(chunk: dict, container: str) -> dict:
    """Move usage a service reports elsewhere (Groq: `x_groq.usage`) to where OpenAI puts it."""
    if container and not chunk.get("usage"):
        usage = (chunk.get(container) or {}).get("usage") if isinstance(chunk.get(container), dict) else None
        if usage:
            chunk["usage"] = usage
    return chunk


def _image_usage(usage: object) -> Usage | None:
    """gpt-image-1 bills tokens: `usage.input_tokens` and `output_tokens`; DALL-E reports none."""
    if not isinstance(usage, dict) or "input_tokens" not in usage:
        return None
    return Usage(prompt_tokens=int(usage.get("input_tokens") or 0),
                 completion_tokens=int(usage.get("output_tokens") or 0))
