"""OpenAI's Responses API door: `POST /v1/responses` and the stored responses under it.

One pipeline, another door: a Responses request is translated into the gateway's chat request
(`routing.responses_format`) and served by `pipeline.chat`, so routing rules, failover, budgets,
rate limits, the cache, guardrails and the UsageRecord (`endpoint = "responses"`) are chat's; the
answer goes back as a Response object or its typed events. A tenant that keeps content
(`Tenant.keep_content`) keeps its responses (`store`, default true) for `GET`/`DELETE
/v1/responses/{id}`, `/input_items` and `previous_response_id` (`accounting.stored_responses`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounting.auth import ApiKeyContext, request_authenticate
from accounting.stored_responses import stored_response_create, stored_response_delete, stored_response_get
from kernel import wire_json
from kernel.db_executor import db_call
from kernel.errors import GatewayError, InvalidRequest, NotFound, error_response
from kernel.http import EventStream, allow_methods, read_body
from kernel.wire_json import JsonBody
from routing import pipeline, validation
from routing.call import Call
from routing.responses_format import (
    Echo,
    chat_payload,
    conversation_items,
    input_items,
    request_check,
    response_object,
)
from routing.responses_stream import response_events

logger = logging.getLogger(__name__)

INPUT_ITEMS_LIMIT = 100


@dataclass
class Conversation:
    """What the door keeps of a request between its translation and its answer."""

    body: dict = field(default_factory=dict)
    context: list[dict] = field(default_factory=list)  # the earlier responses' items
    items: list[dict] = field(default_factory=list)  # its own input
    store: bool = False


def _with_headers(response: HttpResponse, call: Call) -> HttpResponse:
    for name, value in call.headers().items():
        response[name] = value
    return response


@csrf_exempt
@allow_methods("POST")
async def responses(request: HttpRequest) -> HttpResponse:
    call = Call(endpoint="responses", response_prefix="resp_")
    conversation = Conversation()
    try:
        raw = read_body(request)
        result = await pipeline.chat(
            call, credential=functools.partial(request_authenticate, request),
            parse=lambda: responses_parse(
                call, validation.json_body(raw, max_bytes=settings.GATEWAY_MAX_BODY_BYTES), conversation),
            headers=request.headers,
        )
    except GatewayError as exc:
        return _with_headers(error_response(exc), call)
    if isinstance(result, dict):
        body = response_object(result, echo=responses_echo(call, conversation))
        await _store(call, conversation, body)
        return _with_headers(JsonBody(body), call)
    return _with_headers(EventStream(_sse(responses_stream(call, conversation, result))), call)


async def responses_parse(call: Call, body: dict, conversation: Conversation) -> dict:
    """The chat request of a Responses body, with the conversation it continues, if any (read as
    the authenticated tenant: `pipeline.chat` runs this after the credential)."""
    request_check(body)
    conversation.items = input_items(body["input"])
    conversation.store = _store_wanted(call.auth, body)
    if body.get("previous_response_id"):
        conversation.context = await _context(call.auth, body["previous_response_id"])
    conversation.body = body
    return chat_payload(body, items=conversation.context + conversation.items)


def responses_echo(call: Call, conversation: Conversation) -> Echo:
    model = call.deployment.target.upstream_model if call.deployment else call.requested_model
    return Echo(response_id=call.response_id, model=model, body={**conversation.body, "store": conversation.store})


def _store_wanted(auth: ApiKeyContext, body: dict) -> bool:
    """`store` defaults to true, as OpenAI's; a tenant that keeps no content stores nothing, and an
    explicit `store: true` from it is refused rather than silently dropped."""
    if body.get("store") is False:
        return False
    if auth.keep_content:
        return True
    if body.get("store") is True:
        raise InvalidRequest(
            "This tenant keeps no content, so the gateway cannot store responses: send 'store': false "
            "(or leave it out).", param="store", code="store_not_allowed",
        )
    return False


async def _context(auth: ApiKeyContext, response_id: str) -> list[dict]:
    stored = await db_call(stored_response_get, tenant_id=auth.tenant_id, response_id=response_id)
    if stored is None:
        raise InvalidRequest(f"Previous response with id '{response_id}' not found.",
                             param="previous_response_id", code="previous_response_not_found")
    return conversation_items(stored.context, stored.input_items, stored.response)


async def _store(call: Call, conversation: Conversation, body: dict) -> None:
    """Keep the answered response; a database that fails now costs the client its stored copy, not
    the answer it was billed for (logged)."""
    if not conversation.store or body["status"] == "failed":
        return
    try:
        await db_call(stored_response_create, tenant_id=call.auth.tenant_id, response_id=body["id"],
                      context=conversation.context, input_items=conversation.items, response=body)
    except (OperationalError, InterfaceError):
        logger.warning("response %s: not stored (database unavailable)", body["id"], exc_info=True)


async def responses_stream(call: Call, conversation: Conversation, chunks) -> AsyncIterator[dict]:
    """The typed events of a streamed answer (HTTP's SSE, the WebSocket's `response.event`s); the
    finished response is stored before its last event goes out, and `chunks` closed (the request
    recorded) however the stream ends."""
    try:
        async for event in response_events(chunks, echo=responses_echo(call, conversation)):
            if event["type"] in ("response.completed", "response.incomplete"):
                await _store(call, conversation, event["response"])
            yield event
    finally:
        await chunks.aclose()  # records the request now, however the stream ended


def _event(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + wire_json.dumps(event) + b"\n\n"


async def _sse(events: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """OpenAI's framing of the events; an unexpected failure still ends the stream with an event."""
    sequence = 0
    try:
        async for event in events:
            sequence = event["sequence_number"] + 1
            yield _event(event)
    except Exception:
        logger.exception("stream failed")
        yield _event({"type": "error", "sequence_number": sequence, "code": "server_error",
                      "message": "The gateway failed while streaming.", "param": None})
    finally:
        await events.aclose()


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


@allow_methods("GET", "DELETE")
async def response_detail(request: HttpRequest, response_id: str) -> HttpResponse:
    """`GET /v1/responses/{id}` (the Response as it was answered), `DELETE` (gone for good)."""
    try:
        auth = await request_authenticate(request)
        if request.method == "DELETE":
            if not await db_call(stored_response_delete, tenant_id=auth.tenant_id, response_id=response_id):
                raise _not_found(response_id)
            return JsonResponse({"id": response_id, "object": "response", "deleted": True})
        stored = await db_call(stored_response_get, tenant_id=auth.tenant_id, response_id=response_id)
        if stored is None:
            raise _not_found(response_id)
    except GatewayError as exc:
        return error_response(exc)
    return JsonBody(stored.response)


@csrf_exempt
@allow_methods("POST")
async def response_cancel(request: HttpRequest, response_id: str) -> HttpResponse:
    """`POST /v1/responses/{id}/cancel`: OpenAI cancels only a response created with `background:
    true`, which the gateway does not run (`background` is refused), so a stored response is always
    a synchronous one: OpenAI's 400 for it; another tenant's or a missing one is the usual 404."""
    try:
        auth = await request_authenticate(request)
        stored = await db_call(stored_response_get, tenant_id=auth.tenant_id, response_id=response_id)
        if stored is None:
            raise _not_found(response_id)
        raise InvalidRequest("Cannot cancel a synchronous response.", param="response_id",
                             code="response_not_cancellable")
    except GatewayError as exc:
        return error_response(exc)


@csrf_exempt
@allow_methods("POST")
async def response_input_tokens(request: HttpRequest) -> HttpResponse:
    """`POST /v1/responses/input_tokens`: the input tokens of a Responses request body (with the
    conversation `previous_response_id` continues), as `pipeline.prompt_tokens_count` counts those
    of its chat translation: the routed deployment's own free counter where it has one, else the
    gateway's estimate (`x-gateway-token-count` says which). Nothing is billed or stored."""
    call = Call(endpoint="responses.input_tokens", response_prefix="resp_")
    try:
        raw = read_body(request)
        call.auth = await request_authenticate(request)
        body = validation.json_body(raw, max_bytes=settings.GATEWAY_MAX_BODY_BYTES)
        payload = await responses_parse(call, {**body, "store": False}, Conversation())
        payload = validation.chat_request_validate({**payload, "max_completion_tokens": 1})
        count, source = await pipeline.prompt_tokens_count(auth=call.auth, payload=payload)
    except GatewayError as exc:
        return error_response(exc)
    response = JsonResponse({"object": "response.input_tokens", "input_tokens": count})
    response["x-gateway-token-count"] = source
    return response


@allow_methods("GET")
async def response_input_items(request: HttpRequest, response_id: str) -> HttpResponse:
    """`GET /v1/responses/{id}/input_items`: the request's own input items, a cursor page
    (`limit` 1-100, default 20; `order` desc (default) or asc; `after` an item id)."""
    try:
        auth = await request_authenticate(request)
        limit, order, after = _page(request.GET)
        stored = await db_call(stored_response_get, tenant_id=auth.tenant_id, response_id=response_id)
        if stored is None:
            raise _not_found(response_id)
    except GatewayError as exc:
        return error_response(exc)
    items = list(stored.input_items) if order == "asc" else list(reversed(stored.input_items))
    if after:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return JsonResponse({
        "object": "list", "data": page, "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit,
    })


def _page(params) -> tuple[int, str, str]:
    try:
        limit = int(params.get("limit") or 20)
    except ValueError:
        limit = 0
    if not 1 <= limit <= INPUT_ITEMS_LIMIT:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {INPUT_ITEMS_LIMIT}.", param="limit")
    order = params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc.", param="order")
    return limit, order, params.get("after") or ""
