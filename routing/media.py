"""The media endpoints as the pipeline sees them: images, audio, moderations, rerank.

Each is a `MediaKind`: the mode of the models that serve it, its validator, the text that goes in
(what the input guardrails check, the prompt tokens estimated, the content kept), the worst case
of the units it may bill (what a budget reserves), the deployments that can serve the request,
and the adapter method that sends it. `routing.pipeline.media` runs them all through the same
steps as chat and embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from kernel.errors import InvalidRequest
from providers.adapters import Adapter, MediaResult, Target, Units
from providers.adapters.media import DEFAULT_IMAGE_SIZE, searches
from routing import media_validation as checks


@dataclass(frozen=True)
class MediaKind:
    endpoint: str  # the UsageRecord's
    mode: str  # of the provider models that serve it
    validate: Callable[[dict], dict]
    send: Callable[[Adapter, dict, Target], object]  # -> awaitable MediaResult
    texts: Callable[[dict], list[str]] = lambda payload: []
    with_texts: Callable[[dict, list[str]], dict] = lambda payload, texts: payload
    worst: Callable[[dict], Units | None] = lambda payload: None
    # Why a model cannot serve the request: the 400 naming the parameter, or None.
    unfit: Callable[[dict, str], InvalidRequest | None] = lambda payload, upstream_model: None


def _input_texts(payload: dict) -> list[str]:
    value = payload.get("input")
    if isinstance(value, str):
        return [value]
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _input_with(payload: dict, texts: list[str]) -> dict:
    value = payload.get("input")
    if isinstance(value, str):
        return {**payload, "input": texts[0]}
    given = iter(texts)
    return {**payload, "input": [next(given) if isinstance(item, str) else item for item in value]}


def _image_worst(payload: dict) -> Units:
    return Units(kind="image", count=Decimal(payload.get("n") or 1), size=payload.get("size") or DEFAULT_IMAGE_SIZE,
                 quality=payload.get("quality") or "")


def _image_unfit(payload: dict, upstream_model: str) -> InvalidRequest | None:
    return checks.image_model_check(payload, upstream_model)


IMAGES = MediaKind(
    endpoint="images.generations", mode="image", validate=checks.images_request_validate,
    send=lambda adapter, payload, target: adapter.images(payload, target),
    texts=lambda payload: [payload["prompt"]],
    with_texts=lambda payload, texts: {**payload, "prompt": texts[0]},
    worst=_image_worst, unfit=_image_unfit,
)


def transcription_kind(*, translate: bool) -> MediaKind:
    return MediaKind(
        endpoint="audio.translations" if translate else "audio.transcriptions", mode="transcription",
        validate=lambda body: body,  # validated by the door, which reads the upload (routing.media_api)
        send=lambda adapter, payload, target: adapter.transcription(payload["file"], target, translate=translate),
        worst=lambda payload: Units(kind="audio_second", count=payload["file"].seconds),
    )


TRANSCRIPTIONS = transcription_kind(translate=False)
TRANSLATIONS = transcription_kind(translate=True)

SPEECH = MediaKind(
    endpoint="audio.speech", mode="speech", validate=checks.speech_request_validate,
    send=lambda adapter, payload, target: adapter.speech(payload, target),
    texts=lambda payload: [payload["input"]],
    with_texts=lambda payload, texts: {**payload, "input": texts[0]},
    worst=lambda payload: Units(kind="character", count=Decimal(len(payload["input"]))),
    unfit=checks.speech_model_check,
)

MODERATIONS = MediaKind(
    endpoint="moderations", mode="moderation", validate=checks.moderations_request_validate,
    send=lambda adapter, payload, target: adapter.moderations(payload, target),
    texts=_input_texts, with_texts=_input_with,
)

RERANK = MediaKind(
    endpoint="rerank", mode="rerank", validate=checks.rerank_request_validate,
    send=lambda adapter, payload, target: adapter.rerank(payload, target),
    texts=lambda payload: [payload["query"], *payload["documents"]],
    with_texts=lambda payload, texts: {**payload, "query": texts[0], "documents": texts[1:]},
    worst=lambda payload: Units(kind="search", count=Decimal(searches(len(payload["documents"])))),
)

__all__ = ["IMAGES", "MODERATIONS", "MediaKind", "MediaResult", "RERANK", "SPEECH", "TRANSCRIPTIONS", "TRANSLATIONS"]
