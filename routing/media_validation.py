"""Validation of the media endpoints' requests: images, audio, moderations (OpenAI's documented
schema) and rerank (Cohere's). Like `routing.validation`, each check raises `InvalidRequest`
naming the parameter, and a validator returns the payload to forward upstream.

References: https://platform.openai.com/docs/api-reference/images/create,
https://platform.openai.com/docs/api-reference/audio, https://platform.openai.com/docs/api-reference/moderations,
https://docs.cohere.com/reference/rerank, https://docs.cohere.com/v1/reference/rerank
"""

from __future__ import annotations

import io
from decimal import Decimal

import mutagen

from kernel.errors import InvalidRequest
from providers.adapters.gemini_media import (
    GEMINI_SPEECH_FORMATS,
    GEMINI_SPEECH_PREFIX,
    GEMINI_VOICES,
    IMAGEN_ASPECT_RATIOS,
    IMAGEN_MAX_IMAGES,
    IMAGEN_PREFIX,
)
from routing.validation import GATEWAY_FIELDS, _integer, _metadata, _model, _number, _reject_unknown, _routing, _string

IMAGE_FIELDS = {
    "model", "prompt", "n", "size", "quality", "response_format", "style", "user", "background",
    "moderation", "output_compression", "output_format",
} | GATEWAY_FIELDS
IMAGE_SIZES = {"256x256", "512x512", "1024x1024", "1792x1024", "1024x1792", "1536x1024", "1024x1536", "auto"}
IMAGE_QUALITIES = {"standard", "hd", "low", "medium", "high", "auto"}
MAX_IMAGES = 10
# What each OpenAI image model takes (the docs above): its most images per request and its sizes.
IMAGE_MODELS = {
    "dall-e-2": (10, {"256x256", "512x512", "1024x1024"}),
    "dall-e-3": (1, {"1024x1024", "1792x1024", "1024x1792"}),
    "gpt-image-1": (10, {"1024x1024", "1536x1024", "1024x1536", "auto"}),
    # Gemini's Imagen models (providers/adapters/gemini_media.py): the sizes of its aspect ratios.
    IMAGEN_PREFIX: (IMAGEN_MAX_IMAGES, set(IMAGEN_ASPECT_RATIOS)),
}
# The models that answer only in b64_json (Imagen gives the image's bytes, no URL).
BYTES_ONLY_IMAGE_MODELS = {IMAGEN_PREFIX}
DEFAULT_IMAGE_SIZE = "1024x1024"

SPEECH_FIELDS = {"model", "input", "voice", "response_format", "speed", "instructions", "stream_format"} | GATEWAY_FIELDS
VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse"}
SPEECH_FORMATS = {"mp3", "opus", "aac", "flac", "wav", "pcm"}
MAX_SPEECH_CHARACTERS = 4096
# The largest audio upload (transcriptions, translations): OpenAI's 25 MB. A larger body is a 413
# before any of it is stored (`kernel.http.body_limit`, gateway_site/api_app.py).
MAX_AUDIO_BYTES = 25 * 1024 * 1024

TRANSCRIPTION_FIELDS = {"model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
                        "chunking_strategy", "include[]"}
TRANSLATION_FIELDS = {"model", "prompt", "response_format", "temperature"}
TRANSCRIPT_FORMATS = {"json", "text", "srt", "verbose_json", "vtt"}

MODERATION_FIELDS = {"model", "input"} | GATEWAY_FIELDS
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"

RERANK_FIELDS = {"model", "query", "documents", "top_n", "max_tokens_per_doc", "return_documents",
                 "rank_fields", "max_chunks_per_doc"} | GATEWAY_FIELDS
MAX_RERANK_DOCUMENTS = 1000


def _forwarded(body: dict) -> dict:
    return {key: value for key, value in body.items() if key not in GATEWAY_FIELDS}


def images_request_validate(body: dict) -> dict:
    _reject_unknown(body, IMAGE_FIELDS)
    _model(body)
    _text(body, "prompt", max_length=32000)
    _integer(body, "n", 1, MAX_IMAGES)
    _choice(body, "size", IMAGE_SIZES)
    _choice(body, "quality", IMAGE_QUALITIES)
    _choice(body, "response_format", {"url", "b64_json"})
    _choice(body, "style", {"vivid", "natural"})
    _string(body, "user", max_length=512)
    _metadata(body)
    _routing(body)
    return _forwarded(body)


def image_model_check(payload: dict, upstream_model: str) -> InvalidRequest | None:
    """Why an upstream image model cannot serve `payload` (`n` past its maximum, a size it does
    not make, a URL from a model that answers with bytes), as the 400 naming the parameter, or
    None; a model not listed in `IMAGE_MODELS` takes what the endpoint takes."""
    upstream_model = upstream_model.removeprefix("models/")  # Gemini's spelling
    family = next((name for name in IMAGE_MODELS if upstream_model.startswith(name)), None)
    if family is None:
        return None
    most, sizes = IMAGE_MODELS[family]
    if (payload.get("n") or 1) > most:
        return InvalidRequest(f"'n' must be at most {most} for {family}.", param="n")
    if payload.get("size") and payload["size"] not in sizes:
        return InvalidRequest(f"'size' must be one of {', '.join(sorted(sizes))} for {family}.", param="size")
    if family in BYTES_ONLY_IMAGE_MODELS and payload.get("response_format") == "url":
        return InvalidRequest(f"'response_format' must be b64_json for {family} models (they answer with "
                              "the image's bytes).", param="response_format")
    return None


def speech_model_check(payload: dict, upstream_model: str) -> InvalidRequest | None:
    """Why an upstream speech model cannot serve `payload`, as the 400 naming the parameter, or
    None: a Gemini TTS model takes Gemini's voices, wav or pcm, and neither `speed` nor
    `instructions` (providers/adapters/gemini_media.py); any other model OpenAI's voices."""
    voice = payload.get("voice")
    if not upstream_model.removeprefix("models/").startswith(GEMINI_SPEECH_PREFIX):
        if voice not in VOICES:
            return InvalidRequest(f"'voice' must be one of {', '.join(sorted(VOICES))} for {upstream_model}.",
                                  param="voice")
        return None
    if voice not in GEMINI_VOICES:
        return InvalidRequest(f"'voice' must be one of Gemini's voices ({', '.join(sorted(GEMINI_VOICES))}) "
                              f"for {upstream_model}.", param="voice")
    if payload.get("response_format") not in (None, *GEMINI_SPEECH_FORMATS):
        return InvalidRequest(f"'response_format' must be wav or pcm for {upstream_model} (Gemini answers "
                              "with PCM audio).", param="response_format")
    for name in ("speed", "instructions"):
        if payload.get(name) is not None and not (name == "speed" and payload[name] == 1):
            return InvalidRequest(f"'{name}' is not supported by {upstream_model}; Gemini's speech is "
                                  "steered by the text itself.", param=name)
    return None


def speech_request_validate(body: dict) -> dict:
    _reject_unknown(body, SPEECH_FIELDS)
    _model(body)
    _text(body, "input", max_length=MAX_SPEECH_CHARACTERS)
    if "voice" not in body:
        raise InvalidRequest("Missing required parameter: 'voice'.", param="voice", code="missing_required_parameter")
    _choice(body, "voice", VOICES | GEMINI_VOICES)  # which model takes which: speech_model_check
    _choice(body, "response_format", SPEECH_FORMATS)
    _number(body, "speed", 0.25, 4.0)
    _string(body, "instructions", max_length=4096)
    _metadata(body)
    _routing(body)
    return _forwarded(body)


def moderations_request_validate(body: dict) -> dict:
    _reject_unknown(body, MODERATION_FIELDS)
    body.setdefault("model", DEFAULT_MODERATION_MODEL)
    _model(body)
    value = body.get("input")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("'input' must not be empty.", param="input")
    elif not isinstance(value, list) or not value or not all(
        isinstance(item, str) or (isinstance(item, dict) and item.get("type") in ("text", "image_url"))
        for item in value
    ):
        raise InvalidRequest("'input' must be a string, an array of strings, or an array of text and "
                             "image_url objects.", param="input")
    _metadata(body)
    _routing(body)
    return _forwarded(body)


def rerank_request_validate(body: dict) -> dict:
    """Cohere's rerank body; `documents` may be strings, or (v1) objects with a `text`, which
    become their text. The payload's `documents` are strings."""
    _reject_unknown(body, RERANK_FIELDS)
    _model(body)
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InvalidRequest("invalid request: query cannot be empty.", param="query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise InvalidRequest("invalid request: documents cannot be empty.", param="documents")
    if len(documents) > MAX_RERANK_DOCUMENTS:
        raise InvalidRequest(f"invalid request: at most {MAX_RERANK_DOCUMENTS} documents may be ranked.",
                             param="documents")
    texts = []
    for index, document in enumerate(documents):
        text = document.get("text") if isinstance(document, dict) else document
        if not isinstance(text, str):
            raise InvalidRequest(f"invalid request: documents[{index}] must be a string or an object "
                                 "with a 'text'.", param="documents")
        texts.append(text)
    _integer(body, "top_n", 1, MAX_RERANK_DOCUMENTS)
    _integer(body, "max_tokens_per_doc", 1, 32768)
    _integer(body, "max_chunks_per_doc", 1, 1000)
    if body.get("return_documents") is not None and not isinstance(body["return_documents"], bool):
        raise InvalidRequest("invalid request: return_documents must be a boolean.", param="return_documents")
    _metadata(body)
    _routing(body)
    payload = _forwarded(body)
    payload["documents"] = texts
    payload.pop("rank_fields", None)
    return payload


def transcription_fields_validate(fields: dict, *, translate: bool) -> dict:
    """The form fields of a transcription or translation (strings; `timestamp_granularities[]`
    a list)."""
    _reject_unknown(fields, TRANSLATION_FIELDS if translate else TRANSCRIPTION_FIELDS)
    _model(fields)
    _choice(fields, "response_format", TRANSCRIPT_FORMATS)
    if fields.get("temperature") is not None:
        try:
            temperature = float(fields["temperature"])
        except ValueError:
            temperature = -1.0
        if not 0 <= temperature <= 1:
            raise InvalidRequest("'temperature' must be a number between 0 and 1.", param="temperature")
    for granularity in fields.get("timestamp_granularities[]") or ():
        if granularity not in ("word", "segment"):
            raise InvalidRequest("'timestamp_granularities[]' must hold 'word' or 'segment'.",
                                 param="timestamp_granularities[]")
    return fields


def audio_seconds(content: bytes) -> Decimal:
    """The duration of an audio file, read from its headers (mutagen: wav, mp3, m4a, ogg, flac...);
    a file whose duration cannot be read is refused."""
    try:
        audio = mutagen.File(io.BytesIO(content))
    except Exception:  # noqa: BLE001 - mutagen raises many kinds on a file it cannot parse
        audio = None
    length = getattr(getattr(audio, "info", None), "length", None)
    if not isinstance(length, (int, float)) or length <= 0:
        raise InvalidRequest(
            "The audio file could not be read. Supported formats: flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav.",
            param="file", code="invalid_audio",
        )
    return Decimal(str(round(length, 3)))


def _text(body: dict, name: str, *, max_length: int) -> None:
    value = body.get(name)
    if name not in body:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string.", param=name)
    if len(value) > max_length:
        raise InvalidRequest(f"'{name}' must be at most {max_length} characters.", param=name,
                             code="string_above_max_length")


def _choice(body: dict, name: str, allowed: set[str]) -> None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or value not in allowed):
        raise InvalidRequest(f"'{name}' must be one of {', '.join(sorted(allowed))}; got {value!r}.", param=name)
