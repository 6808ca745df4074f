"""The Anthropic-compatible front door: `POST /v1/messages` and `/v1/messages/count_tokens`.

Same auth, limits, routing and accounting as the OpenAI endpoint (one pipeline, two doors); only
the wire format differs: requests are translated in, answers and streams translated out, and
errors come back in Anthropic's error shape.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounting.auth import request_authenticate
from kernel import wire_json
from kernel.errors import GatewayError
from kernel.http import EventStream, allow_methods, read_body
from kernel.wire_json import JsonBody
from routing import pipeline, validation
from routing.anthropic_format import anthropic_error, anthropic_events, anthropic_message, openai_payload
from routing.call import Call


def _response(call: Call, response: HttpResponse) -> HttpResponse:
    for name, value in call.headers().items():
        response[name] = value
    return response


def _error(call: Call, exc: GatewayError) -> HttpResponse:
    response = JsonResponse(anthropic_error(exc), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return _response(call, response)


@csrf_exempt
@allow_methods("POST", shape=anthropic_error)
async def messages(request: HttpRequest) -> HttpResponse:
    call = Call(endpoint="messages", response_prefix="msg_")
    try:
        raw = read_body(request)
        result = await pipeline.chat(
            call, credential=functools.partial(request_authenticate, request), parse=lambda: _payload(raw),
            headers=request.headers,
        )
    except GatewayError as exc:
        return _error(call, exc)
    model = call.deployment.target.upstream_model if call.deployment else call.requested_model
    if isinstance(result, dict):
        return _response(call, JsonBody(anthropic_message(result, message_id=call.response_id, model=model)))
    # The provider's own count when it gave one before its first token (Anthropic's message_start),
    # else the gateway's estimate; message_delta carries the final counts either way.
    input_tokens = call.usage_so_far.get("prompt_tokens", None)
    if input_tokens is None:
        input_tokens = call.estimated_prompt_tokens()
    events = anthropic_events(result, message_id=call.response_id, model=model, input_tokens=input_tokens)
    return _response(call, EventStream(_sse(events, result)))


def _payload(raw: bytes) -> dict:
    """The body in Anthropic's format, parsed and translated into the OpenAI-shaped request."""
    payload = openai_payload(validation.json_body(raw, max_bytes=settings.GATEWAY_MAX_BODY_BYTES))
    if payload["stream"]:
        payload["stream_options"] = {"include_usage": True}
    return payload


async def _sse(events: AsyncIterator[tuple[str, dict]], chunks) -> AsyncIterator[bytes]:
    try:
        async for name, data in events:
            yield b"event: " + name.encode() + b"\ndata: " + wire_json.dumps(data) + b"\n\n"
    finally:
        await chunks.aclose()  # records the request now, however the stream ended


@csrf_exempt
@allow_methods("POST", shape=anthropic_error)
async def count_tokens(request: HttpRequest) -> HttpResponse:
    """Anthropic's token counting: the routed deployment's own counter where it has one, else the
    gateway's estimate (`pipeline.prompt_tokens_count`); `x-gateway-token-count` says which.
    Nothing is billed."""
    call = Call(endpoint="messages.count_tokens")
    try:
        raw = read_body(request)
        auth = await request_authenticate(request)
        body = validation.json_body(raw, max_bytes=settings.GATEWAY_MAX_BODY_BYTES)
        # Validated as /v1/messages validates its translation: a model that is not a string (the
        # schema fuzzer sent `{}`) is a 400 here too, not a 500 in routing.
        payload = validation.chat_request_validate(openai_payload({"max_tokens": 1, **body}))
        count, source = await pipeline.prompt_tokens_count(auth=auth, payload=payload)
    except GatewayError as exc:
        return _error(call, exc)
    response = JsonResponse({"input_tokens": count})
    response["x-gateway-token-count"] = source
    return response
