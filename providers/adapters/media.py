"""What the media endpoints' adapters share: the multipart body of an audio upload, the units a
transcription or rerank billed, and the rerank answer in Cohere's shape.

A rerank answer leaves the gateway in Cohere's v2 shape whatever answered it (Cohere itself, or an
OpenAI-compatible rerank server: Jina, vLLM; Hugging Face TEI's native `/rerank`):
`{"id", "results": [{"index", "relevance_score"}], "meta": {"billed_units": {"search_units"}}}`.
A search is Cohere's billing unit: one query over up to 100 documents
(https://docs.cohere.com/docs/how-does-cohere-pricing-work).
"""

from __future__ import annotations

import math
import secrets
import uuid
from decimal import Decimal

from providers.adapters.base import AudioUpload, Units

DOCUMENTS_PER_SEARCH = 100
DEFAULT_IMAGE_SIZE = "1024x1024"  # OpenAI's, when a request names none


def multipart_encode(upload: AudioUpload, *, model: str) -> tuple[bytes, str]:
    """The upload as `multipart/form-data` (RFC 7578): its fields, `model` as the upstream's,
    and the file; returns (body, content type)."""
    boundary = "gateway" + secrets.token_hex(16)
    parts: list[bytes] = []
    fields = {**upload.fields, "model": model}
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'.encode()
                + str(item).encode() + b"\r\n"
            )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{_quoted(upload.filename)}"\r\n'
        f"Content-Type: {upload.content_type or 'application/octet-stream'}\r\n\r\n".encode()
        + upload.content + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def audio_units(seconds: object, upload: AudioUpload) -> Units:
    """The audio seconds billed: as the provider reports them, else as measured from the file."""
    try:
        reported = Decimal(str(seconds)) if seconds is not None else None
    except ArithmeticError:
        reported = None
    if reported is None or not reported.is_finite() or reported < 0:
        reported = upload.seconds
    return Units(kind="audio_second", count=reported.quantize(Decimal("0.001")))


def searches(documents: int) -> int:
    return max(1, math.ceil(documents / DOCUMENTS_PER_SEARCH))


def rerank_answer(results: list[dict], *, search_units: int, response_id: str = "") -> dict:
    return {
        "id": response_id or str(uuid.uuid4()),
        "results": results,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": search_units}},
    }


def rerank_results(data: dict, *, documents: int, score_key: str = "relevance_score") -> list[dict] | None:
    """The ranked results of an answer, each `{index, relevance_score}`, best first; None when the
    answer does not hold them (a malformed answer)."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        return None
    ranked = []
    for item in results:
        if not isinstance(item, dict):
            return None
        index, score = item.get("index"), item.get(score_key)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < documents:
            return None
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            return None
        ranked.append({"index": index, "relevance_score": float(score)})
    ranked.sort(key=lambda item: -item["relevance_score"])
    return ranked
