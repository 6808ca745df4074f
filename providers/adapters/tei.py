"""Hugging Face Text Embeddings Inference (TEI): its native rerank, and OpenAI's embeddings.

A TEI server serves one model; `api_base` is the server's root (`http://tei:8080`), as TEI's own
clients take it. Rerank is TEI's `POST /rerank`
(https://huggingface.github.io/text-embeddings-inference/): the request
`{"query", "texts", "raw_scores", "return_text"}`, the answer a JSON list of `{"index", "score"}`
(best first). It is sent with `raw_scores: false`, so the scores are the model's probabilities
(0 to 1) as Cohere's `relevance_score` are, and leaves the gateway in Cohere's shape
(`media.rerank_answer`); TEI has no `top_n`, the gateway keeps the first `top_n` itself and bills
one search per 100 documents. Embeddings go to TEI's OpenAI-compatible `POST /v1/embeddings`.
TEI serves nothing else: chat and the other media endpoints are a 400 naming the model.
Errors are TEI's `{"error": "...", "error_type": "Validation" | "Tokenizer" | "Backend" | "Overloaded" | "Empty"}`.
"""

from __future__ import annotations

from decimal import Decimal

from providers.adapters.base import AudioUpload, MediaResult, Target, Units, UpstreamRequest
from providers.adapters.media import rerank_answer, rerank_results, searches
from providers.adapters.openai import OpenAIAdapter

# TEI's error types (its `ErrorType`) that name a gateway error class; the others keep the status's.
_ERROR_CLASSES = {"Overloaded": "rate_limited", "Tokenizer": "context_length_exceeded"}


class TEIAdapter(OpenAIAdapter):
    wire_type = "tei"

    def _url(self, target: Target, path: str) -> str:
        return f"{target.api_base.rstrip('/')}/{path if path == 'rerank' else 'v1/' + path}"

    def chat_request(self, payload: dict, target: Target) -> UpstreamRequest:
        raise self.not_served(target, "chat completions")

    def text_completion_request(self, payload: dict, legacy: dict, target: Target) -> UpstreamRequest:
        raise self.not_served(target, "text completions")

    async def images(self, payload: dict, target: Target) -> MediaResult:
        raise self.not_served(target, "image generation")

    async def transcription(self, upload: AudioUpload, target: Target, *, translate: bool) -> MediaResult:
        raise self.not_served(target, "audio transcription")

    async def speech(self, payload: dict, target: Target) -> MediaResult:
        raise self.not_served(target, "text to speech")

    async def moderations(self, payload: dict, target: Target) -> MediaResult:
        raise self.not_served(target, "moderation")

    async def rerank(self, payload: dict, target: Target) -> MediaResult:
        body = {"query": payload["query"], "texts": payload["documents"], "raw_scores": False, "return_text": False}
        request = UpstreamRequest(url=self._url(target, "rerank"), json=body, headers=self._headers(target))
        response = await self._send_read(request, target)
        try:
            data = response.json()
        except ValueError:
            data = None
        count = len(payload["documents"])
        results = rerank_results({"results": data}, documents=count, score_key="score")
        if results is None:
            raise self.malformed(target, "a rerank answer (not a list of index and score)")
        found = searches(count)
        return MediaResult(
            body=rerank_answer(results[: payload.get("top_n") or None], search_units=found),
            units=Units(kind="search", count=Decimal(found)),
        )

    def error_details(self, status: int, data: object) -> tuple[str | None, str]:
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return _ERROR_CLASSES.get(str(data.get("error_type"))), data["error"]
        return super().error_details(status, data)
