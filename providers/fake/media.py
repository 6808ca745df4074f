"""The fake's media endpoints, in OpenAI's and Cohere's documented wire formats, deterministic
from the request: images (`POST /v1/images/generations`, the `url`s served by the fake itself at
`GET /_fake/images/{name}.png`), audio (`POST /v1/audio/transcriptions` and `/translations`,
multipart, with the duration read from the uploaded WAV; `POST /v1/audio/speech`, audio streamed
in chunks), `POST /v1/moderations`, and rerank (`POST /v1/rerank`: Cohere v1, Jina and vLLM share
its shape; `POST /v2/rerank`: Cohere v2; `POST /rerank`: Hugging Face TEI's native shape).

References: https://platform.openai.com/docs/api-reference/images,
https://platform.openai.com/docs/api-reference/audio, https://platform.openai.com/docs/api-reference/moderations,
https://docs.cohere.com/reference/rerank, https://jina.ai/reranker/,
https://huggingface.github.io/text-embeddings-inference/ (`/rerank`)
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import struct
import time
import wave
import zlib
from email.parser import BytesParser
from email.policy import HTTP

from providers.fake.content import request_id_new, tokens_count
from providers.fake.dialect import Dialect, dumps
from providers.fake.directives import directive_build, directive_extract
from providers.fake.errors import ApiError
from providers.fake.exchange import Exchange
from providers.fake.respond import Settings, before_response, json_body

IMAGE_MODELS = {
    "dall-e-2": (10, {"256x256", "512x512", "1024x1024"}),
    "dall-e-3": (1, {"1024x1024", "1792x1024", "1024x1792"}),
    "gpt-image-1": (10, {"1024x1024", "1536x1024", "1024x1536", "auto"}),
}
VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse"}
# The content type of each speech format, as OpenAI answers it.
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
                "wav": "audio/wav", "pcm": "audio/pcm"}
SPEECH_RATE = 24000  # Hz, 16-bit mono: OpenAI's pcm
SECONDS_PER_CHARACTER = 0.06
SPEECH_CHUNK = 4096
TRANSCRIPT_FORMATS = {"json", "text", "srt", "verbose_json", "vtt"}
MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
# Words the fake moderation flags, and the category each flags.
FLAGGED_WORDS = {"kill": "violence", "attack": "violence", "hate": "hate"}
WORD = re.compile(r"[a-z0-9]+")


def _directive(ex: Exchange, settings: Settings, text: str = ""):
    return directive_build(header=ex.headers.get("x-fake-directive", ""),
                           message=directive_extract(text=text)[1], server=settings.directive)


def _required(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    return value


# --- images -------------------------------------------------------------------------------------


async def images(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    body = json_body(ex=ex)
    model, prompt = body.get("model") or "dall-e-2", _required(body, "prompt")
    most, sizes = IMAGE_MODELS.get(model, (10, set().union(*(s for _, s in IMAGE_MODELS.values()))))
    n, size = body.get("n") or 1, body.get("size") or "1024x1024"
    if not isinstance(n, int) or not 1 <= n <= most:
        raise ApiError(400, f"Invalid 'n': must be between 1 and {most} for {model}.", param="n")
    if size not in sizes:
        raise ApiError(400, f"Invalid size '{size}'. Supported sizes are {', '.join(sorted(sizes))}.", param="size")
    answer_format = body.get("response_format") or ("b64_json" if model.startswith("gpt-image") else "url")
    if answer_format not in ("url", "b64_json"):
        raise ApiError(400, f"Invalid response_format '{answer_format}'.", param="response_format")
    directive = _directive(ex, settings, prompt)
    if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive,
                                 tokens=tokens_count(text=prompt)):
        return
    digest = hashlib.sha256(f"{model}|{size}|{prompt}".encode()).hexdigest()[:16]
    data = []
    for index in range(n):
        name = f"{digest}-{index}"
        item = ({"url": f"http://{ex.headers.get('host', '127.0.0.1')}/_fake/images/{name}.png"}
                if answer_format == "url" else {"b64_json": base64.b64encode(image_png(name)).decode()})
        if model == "dall-e-3":
            item["revised_prompt"] = prompt
        data.append(item)
    payload: dict = {"created": int(time.time()), "data": data}
    if model.startswith("gpt-image"):
        prompt_tokens = tokens_count(text=prompt)
        payload["usage"] = {"input_tokens": prompt_tokens, "output_tokens": 272 * n,
                            "total_tokens": prompt_tokens + 272 * n,
                            "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0}}
    await ex.respond(200, dumps(payload), [(dialect.request_id_header, request_id_new())])


async def image_get(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    png = image_png(ex.params["name"])
    await ex.start(200, [("content-type", "image/png"), ("content-length", str(len(png)))])
    await ex.write(png, more=False)


def image_png(name: str) -> bytes:
    """An 8x8 PNG whose colour comes from `name`: a real image, the same for the same name."""
    red, green, blue = hashlib.sha256(name.encode()).digest()[:3]
    rows = b"".join(b"\x00" + bytes((red, green, blue)) * 8 for _ in range(8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# --- audio --------------------------------------------------------------------------------------


def _form(ex: Exchange) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """A multipart/form-data body's fields and its `file` (name, bytes), by the stdlib's parser."""
    content_type = ex.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "Expected a multipart/form-data body with the audio in 'file'.", param="file")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + ex.body)
    if not message.is_multipart():
        raise ApiError(400, "The multipart body could not be parsed.", param="file")
    fields, upload = {}, None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if name == "file":
            upload = (part.get_filename() or "audio", data)
        elif name:
            fields[name] = data.decode("utf-8", "replace")
    return fields, upload


def wav_seconds(data: bytes) -> float:
    try:
        with wave.open(io.BytesIO(data)) as audio:
            return audio.getnframes() / audio.getframerate()
    except (wave.Error, EOFError, ZeroDivisionError) as exc:
        raise ApiError(400, "Invalid file format. The fake provider reads WAV audio only.", param="file",
                       code="invalid_value") from exc


def transcription(*, translate: bool):
    async def handler(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
        dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
        fields, upload = _form(ex)
        _required(fields, "model")
        if upload is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        answer_format = fields.get("response_format") or "json"
        if answer_format not in TRANSCRIPT_FORMATS:
            raise ApiError(400, f"Invalid response_format '{answer_format}'.", param="response_format")
        seconds = wav_seconds(upload[1])
        directive = _directive(ex, settings, fields.get("prompt", ""))
        if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive, tokens=0):
            return
        text = f"The fake {'translation' if translate else 'transcription'} of {seconds:.1f} seconds of audio."
        body, content_type = _transcript(text, seconds, answer_format, translate=translate)
        await ex.start(200, [("content-type", content_type), ("content-length", str(len(body))),
                             (dialect.request_id_header, request_id_new())])
        await ex.write(body, more=False)

    return handler


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    return f"{millis // 3600000:02d}:{millis // 60000 % 60:02d}:{millis // 1000 % 60:02d}{separator}{millis % 1000:03d}"


def _transcript(text: str, seconds: float, answer_format: str, *, translate: bool) -> tuple[bytes, str]:
    billed = {"type": "duration", "seconds": math.ceil(seconds)}
    if answer_format == "json":
        return dumps({"text": text, "usage": billed}), "application/json"
    if answer_format == "verbose_json":
        segment = {"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 3), "text": text, "tokens": [],
                   "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0}
        return dumps({"task": "translate" if translate else "transcribe", "language": "english",
                      "duration": round(seconds, 3), "text": text, "segments": [segment], "usage": billed}), "application/json"
    if answer_format == "srt":
        return f"1\n{_timestamp(0, ',')} --> {_timestamp(seconds, ',')}\n{text}\n\n".encode(), "application/x-subrip"
    if answer_format == "vtt":
        return f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(seconds, '.')}\n{text}\n\n".encode(), "text/vtt"
    return f"{text}\n".encode(), "text/plain; charset=utf-8"


async def speech(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    """Audio of the input's length (0.06 s a character, over `speed`), streamed in 4 KB chunks,
    paced by the stream delay; a real WAV for `wav`, silence-shaped bytes for the other formats."""
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    body = json_body(ex=ex)
    _required(body, "model")
    text = _required(body, "input")
    if len(text) > 4096:
        raise ApiError(400, "'input' must be at most 4096 characters.", param="input", code="string_above_max_length")
    voice = body.get("voice")
    if voice not in VOICES:
        raise ApiError(400, f"Invalid voice {voice!r}; expected one of {', '.join(sorted(VOICES))}.", param="voice")
    answer_format = body.get("response_format") or "mp3"
    if answer_format not in SPEECH_TYPES:
        raise ApiError(400, f"Invalid response_format {answer_format!r}.", param="response_format")
    speed = body.get("speed") or 1.0
    directive = _directive(ex, settings, text)
    if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive, tokens=0):
        return
    audio = speech_audio(text=text, answer_format=answer_format, speed=float(speed))
    await ex.start(200, [("content-type", SPEECH_TYPES[answer_format]),
                         (dialect.request_id_header, request_id_new())])
    delay = directive.chunk_delay_ms if directive.chunk_delay_ms is not None else settings.chunk_delay_ms
    for start in range(0, len(audio), SPEECH_CHUNK):
        if start and not await ex.pause(delay / 1000):
            return
        await ex.write(audio[start:start + SPEECH_CHUNK])
    await ex.write(b"", more=False)


def speech_audio(*, text: str, answer_format: str, speed: float = 1.0) -> bytes:
    frames = int(len(text) * SECONDS_PER_CHARACTER / speed * SPEECH_RATE)
    pcm = bytes(frames * 2)  # 16-bit silence
    if answer_format == "pcm":
        return pcm
    if answer_format == "wav":
        out = io.BytesIO()
        with wave.open(out, "wb") as audio:
            audio.setnchannels(1)
            audio.setsampwidth(2)
            audio.setframerate(SPEECH_RATE)
            audio.writeframes(pcm)
        return out.getvalue()
    # The compressed formats: a tenth of the PCM size, a recognisable header then zeros.
    return f"FAKE-{answer_format.upper()}".encode() + bytes(max(len(pcm) // 10, 64))


# --- moderations ----------------------------------------------------------------------------------


async def moderations(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    body = json_body(ex=ex)
    value = body.get("input")
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if not items:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    texts = [item if isinstance(item, str) else (item.get("text") or "") if isinstance(item, dict) else "" for item in items]
    directive = _directive(ex, settings, texts[-1])
    if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive, tokens=0):
        return
    results = [_moderation(text) for text in texts] if isinstance(value, list) and all(isinstance(i, str) for i in value) \
        else [_moderation(" ".join(texts))]
    payload = {"id": f"modr-{request_id_new()[-24:]}", "model": body.get("model") or "omni-moderation-latest",
               "results": results}
    await ex.respond(200, dumps(payload), [(dialect.request_id_header, request_id_new())])


def _moderation(text: str) -> dict:
    hits = {FLAGGED_WORDS[word] for word in WORD.findall(text.lower()) if word in FLAGGED_WORDS}
    return {
        "flagged": bool(hits),
        "categories": {name: name in hits for name in MODERATION_CATEGORIES},
        "category_scores": {name: 0.9 if name in hits else 0.0001 for name in MODERATION_CATEGORIES},
        "category_applied_input_types": {name: ["text"] for name in MODERATION_CATEGORIES},
    }


# --- rerank ---------------------------------------------------------------------------------------


def _rerank_parse(body: dict) -> tuple[str, str, list[str], int | None]:
    model, query = body.get("model"), body.get("query")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "invalid request: model must be specified.", param="model")
    if not isinstance(query, str) or not query.strip():
        raise ApiError(400, "invalid request: query cannot be empty.", param="query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise ApiError(400, "invalid request: documents cannot be empty.", param="documents")
    texts = [d.get("text") if isinstance(d, dict) else d for d in documents]
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "invalid request: documents must be strings.", param="documents")
    top_n = body.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
        raise ApiError(400, "invalid request: top_n must be a positive integer.", param="top_n")
    return model, query, texts, top_n


def rerank_scores(query: str, documents: list[str]) -> list[dict]:
    """Each document's share of the query's words, with a tie-break from its text; best first."""
    wanted = set(WORD.findall(query.lower()))
    ranked = []
    for index, text in enumerate(documents):
        words = set(WORD.findall(text.lower()))
        overlap = len(wanted & words) / len(wanted) if wanted else 0.0
        tie = int(hashlib.sha256(text.encode()).hexdigest()[:4], 16) / 0xFFFF / 100
        ranked.append({"index": index, "relevance_score": round(min(overlap * 0.98 + tie, 1.0), 6)})
    return sorted(ranked, key=lambda item: -item["relevance_score"])


def rerank(*, version: int):
    async def handler(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
        dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
        body = json_body(ex=ex)
        model, query, documents, top_n = _rerank_parse(body)
        directive = _directive(ex, settings, query)
        if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive, tokens=0):
            return
        results = rerank_scores(query, documents)[:top_n]
        if version == 1 and body.get("return_documents"):
            results = [{**item, "document": {"text": documents[item["index"]]}} for item in results]
        searches = max(1, math.ceil(len(documents) / 100))
        payload: dict = {"id": request_id_new(), "results": results,
                         "meta": {"api_version": {"version": str(version)}, "billed_units": {"search_units": searches}}}
        if version == 1:  # Jina and vLLM answer the same route with the model and its tokens
            tokens = tokens_count(text=query) * len(documents) + sum(tokens_count(text=d) for d in documents)
            payload.update(model=model, usage={"total_tokens": tokens})
        await ex.respond(200, dumps(payload), [(dialect.request_id_header, request_id_new())])

    return handler


async def tei_rerank(*, ex: Exchange, settings: Settings, dialect: Dialect) -> None:
    """TEI's `POST /rerank`: `{"query", "texts", "raw_scores"?, "return_text"?}` answered with a
    JSON list of `{"index", "score"}` (and `text` when asked), best first. Scores are probabilities,
    or their logits with `raw_scores`. TEI's errors are `{"error", "error_type"}`: an empty query
    or texts is a 400 of type `Empty`. A TEI server started with an API key wants it as a bearer
    token; without one (the usual, on a private network) it asks for none."""
    if settings.api_key is not None:
        dialect.authenticate(headers=ex.headers, api_key=settings.api_key)
    body = json_body(ex=ex)
    query, texts = body.get("query"), body.get("texts")
    if not isinstance(query, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) \
            or not isinstance(body.get("raw_scores", False), bool) or not isinstance(body.get("return_text", False), bool):
        text = b"Failed to deserialize the JSON body into the target type: query, texts"  # axum's rejection
        await ex.start(422, [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(text)))])
        await ex.write(text, more=False)
        return
    if not query.strip() or not texts:
        await ex.respond(400, dumps({"error": "`query` and `texts` cannot be empty", "error_type": "Empty"}), [])
        return
    directive = _directive(ex, settings, query)
    if not await before_response(ex=ex, settings=settings, dialect=dialect, directive=directive, tokens=0):
        return
    answer = []
    for item in rerank_scores(query, texts):
        score = item["relevance_score"]
        if body.get("raw_scores"):
            score = round(math.log(max(score, 1e-6) / max(1 - score, 1e-6)), 6)
        answer.append({"index": item["index"], "score": score}
                      | ({"text": texts[item["index"]]} if body.get("return_text") else {}))
    await ex.respond(200, dumps(answer), [])
