"""The OpenAI-compatible HTTP API: parse, call the pipeline, serialize. Nothing else."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounting.auth import request_authenticate
from kernel import wire_json
from kernel.errors import GatewayError, error_response
from kernel.http import EventStream, allow_methods, read_body
from kernel.wire_json import JsonBody
from routing import pipeline, validation
from routing.completions_format import completion_chat_payload, text_completion, text_completion_chunks
from routing.selection import models_visible

logger = logging.getLogger(__name__)


def _with_headers(response: HttpResponse, call: pipeline.Call) -> HttpResponse:
    for name, value in call.headers().items():
        response[name] = value
    return response


def _event(chunk: dict) -> bytes:
    return b"data: " + wire_json.dumps(chunk) + b"\n\n"


async def _sse(chunks: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """OpenAI's stream framing: one `data:` event per chunk, then `data: [DONE]`.

    An unexpected failure still ends the stream with an error event: daphne would otherwise
    leave the client waiting on a response that never completes.
    """
    try:
        async for chunk in chunks:
            yield _event(chunk)
            if "error" in chunk:
                return
    except Exception:
        logger.exception("stream failed")
        yield _event(GatewayError("The gateway failed while streaming.").as_body())
        return
    finally:
        await chunks.aclose()  # runs the pipeline's record step now, not at garbage collection
    yield b"data: [DONE]\n\n"


@csrf_exempt
@allow_methods("POST")
async def chat_completions(request: HttpRequest) -> HttpResponse:
    call = pipeline.Call(endpoint="chat.completions")
    try:
        raw = read_body(request)
        result = await pipeline.chat(
            call,
            credential=functools.partial(request_authenticate, request),
            parse=lambda: validation.json_body(raw, max_bytes=settings.GATEWAY_MAX_BODY_BYTES),
            headers=request.headers,
        )
    except GatewayError as exc:
        return _with_headers(error_response(exc), call)
    if isinstance(result, dict):
        return _with_headers(JsonBody(result), call)
    return _with_headers(EventStream(_sse(result)), call)


@csrf_exempt
@allow_methods("POST")
async def completions(request: HttpRequest) -> HttpResponse:
    """Legacy text completions through the chat pipeline (`routing/completions_format.py`)."""
    call = pipeline.Call(endpoint="completions", response_prefix="cmpl-")

    def parse() -> dict:
        body = validation.json_body(raw, max_bytes=settings.GATEWAY_MAX_BODY_BYTES)
        payload, call.text_completion = completion_chat_payload(body)
        return payload

    try:
        raw = read_body(request)
        result = await pipeline.chat(
            call, credential=functools.partial(request_authenticate, request), parse=parse,
            headers=request.headers,
        )
    except GatewayError as exc:
        return _with_headers(error_response(exc), call)
    if isinstance(result, dict):
        return _with_headers(JsonBody(text_completion(result)), call)
    return _with_headers(EventStream(_sse(text_completion_chunks(result))), call)


@csrf_exempt
@allow_methods("POST")
async def embeddings(request: HttpRequest) -> HttpResponse:
    call = pipeline.Call(endpoint="embeddings")
    try:
        raw = read_body(request)
        result = await pipeline.embeddings(
            call,
            credential=functools.partial(request_authenticate, request),
            parse=lambda: validation.json_body(raw, max_bytes=settings.GATEWAY_MAX_BODY_BYTES),
            headers=request.headers,
        )
    except GatewayError as exc:
        return _with_headers(error_response(exc), call)
    return _with_headers(JsonBody(result), call)


@allow_methods("GET")
async def models(request: HttpRequest) -> HttpResponse:
    try:
        auth = await request_authenticate(request)
    except GatewayError as exc:
        return error_response(exc)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": owner}
        for name, owner, created in await models_visible(auth=auth)
    ]
    return JsonResponse({"object": "list", "data": data})
