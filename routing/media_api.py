"""The media endpoints' HTTP doors: images, audio, moderations (OpenAI's format) and rerank
(Cohere's). Parse, call `routing.pipeline.media`, serialize; nothing else."""

from __future__ import annotations

import asyncio
import functools

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from accounting.auth import request_authenticate
from kernel.errors import GatewayError, InvalidRequest, error_response
from kernel.http import BinaryStream, allow_methods, body_limit, read_body
from kernel.wire_json import JsonBody
from providers.adapters import AudioUpload, MediaResult
from routing import media, media_validation, pipeline, validation


def _with_headers(response: HttpResponse, call: pipeline.Call) -> HttpResponse:
    for name, value in call.headers().items():
        response[name] = value
    return response


async def _json_media(request: HttpRequest, kind: media.MediaKind) -> tuple[pipeline.Call, MediaResult | GatewayError]:
    call = pipeline.Call(endpoint=kind.endpoint)
    try:
        raw = read_body(request)
        result = await pipeline.media(
            call, kind=kind, credential=functools.partial(request_authenticate, request),
            parse=lambda: validation.json_body(raw, max_bytes=settings.GATEWAY_MAX_BODY_BYTES),
            headers=request.headers,
        )
    except GatewayError as exc:
        return call, exc
    return call, result


def _answer(call: pipeline.Call, result: MediaResult | GatewayError) -> HttpResponse:
    if isinstance(result, GatewayError):
        return _with_headers(error_response(result), call)
    if result.chunks is not None:
        return _with_headers(BinaryStream(result.chunks, content_type=result.content_type), call)
    if result.text is not None:
        return _with_headers(HttpResponse(result.text, content_type=result.content_type), call)
    return _with_headers(JsonBody(result.body), call)


@csrf_exempt
@allow_methods("POST")
async def images_generations(request: HttpRequest) -> HttpResponse:
    return _answer(*await _json_media(request, media.IMAGES))


@csrf_exempt
@allow_methods("POST")
async def audio_speech(request: HttpRequest) -> HttpResponse:
    return _answer(*await _json_media(request, media.SPEECH))


@csrf_exempt
@allow_methods("POST")
async def moderations(request: HttpRequest) -> HttpResponse:
    return _answer(*await _json_media(request, media.MODERATIONS))


async def _audio(request: HttpRequest, *, translate: bool) -> HttpResponse:
    kind = media.TRANSLATIONS if translate else media.TRANSCRIPTIONS
    call = pipeline.Call(endpoint=kind.endpoint)
    try:
        result = await pipeline.media(
            call, kind=kind, credential=functools.partial(request_authenticate, request),
            parse=lambda: asyncio.to_thread(_upload_read, request, translate=translate),
            headers=request.headers,
        )
    except GatewayError as exc:
        return _with_headers(error_response(exc), call)
    return _answer(call, result)


@csrf_exempt
@body_limit(media_validation.MAX_AUDIO_BYTES)
@allow_methods("POST")
async def audio_transcriptions(request: HttpRequest) -> HttpResponse:
    return await _audio(request, translate=False)


@csrf_exempt
@body_limit(media_validation.MAX_AUDIO_BYTES)
@allow_methods("POST")
async def audio_translations(request: HttpRequest) -> HttpResponse:
    return await _audio(request, translate=True)


def _upload_read(request: HttpRequest, *, translate: bool) -> dict:
    """The multipart form of an audio request (Django's parser, in a thread: the file may be on
    disk), checked: its fields, and `file` as an `AudioUpload` with its measured duration."""
    if request.content_type != "multipart/form-data":
        raise InvalidRequest("The request must be multipart/form-data with the audio in 'file'.",
                             param="file", code="invalid_content_type")
    try:
        form, files = request.POST, request.FILES
    except (MultiPartParserError, RequestDataTooBig, TooManyFieldsSent) as exc:
        raise InvalidRequest(f"The multipart body could not be read: {exc}", param="file") from exc
    fields: dict = {name: form.get(name) for name in form if not name.endswith("[]")}
    fields.update({name: form.getlist(name) for name in form if name.endswith("[]")})
    media_validation.transcription_fields_validate(fields, translate=translate)
    uploaded = files.get("file")
    if uploaded is None:
        raise InvalidRequest("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    content = uploaded.read()
    seconds = media_validation.audio_seconds(content)
    upload = AudioUpload(
        fields={name: value for name, value in fields.items() if name != "model"},
        filename=uploaded.name or "audio", content=content,
        content_type=uploaded.content_type or "application/octet-stream", seconds=seconds,
    )
    return {"model": fields["model"], "file": upload}


def _cohere_error(call: pipeline.Call, exc: GatewayError) -> HttpResponse:
    """Cohere's error shape (https://docs.cohere.com/reference/errors): `{"id", "message"}`."""
    response = JsonResponse({"id": str(call.request_id), "message": exc.message}, status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return _with_headers(response, call)


async def _rerank(request: HttpRequest, *, version: int) -> HttpResponse:
    call, result = await _json_media(request, media.RERANK)
    if isinstance(result, GatewayError):
        return _cohere_error(call, result)
    body = dict(result.body)
    if version == 1:
        body["meta"] = {**body["meta"], "api_version": {"version": "1"}}
        if call.payload.get("return_documents"):
            documents = call.payload["documents"]
            body["results"] = [{**item, "document": {"text": documents[item["index"]]}} for item in body["results"]]
    top = call.payload.get("top_n")
    if top:
        body["results"] = body["results"][:top]
    return _with_headers(JsonBody(body), call)


@csrf_exempt
@allow_methods("POST", shape=lambda exc: {"message": exc.message})
async def rerank_v1(request: HttpRequest) -> HttpResponse:
    return await _rerank(request, version=1)


@csrf_exempt
@allow_methods("POST", shape=lambda exc: {"message": exc.message})
async def rerank_v2(request: HttpRequest) -> HttpResponse:
    return await _rerank(request, version=2)
