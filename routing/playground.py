"""The chat playground: a page where a tenant member talks to the tenant's chat models.

The page speaks the WebSocket protocol of `routing.consumers` (docs/websocket.md), authenticated
by the member's session, so a playground request goes through the same pipeline, limits, budgets
and usage records as an API request. Replies are rated through `POST /playground/feedback`.
A logged-in user without a tenant membership gets a 403 page saying so.
"""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from accounting.auth import ApiKeyContext
from accounting.members import member_context
from feedback.services import feedback_upsert
from kernel.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    PermissionDenied,
    error_response,
)
from kernel.http import allow_methods
from routing.selection import models_visible
from routing.selectors import routing_table_get

TEMPLATE = "playground/index.html"
CHAT_MODE = "chat"


@login_required
async def playground_index(request: HttpRequest) -> HttpResponse:
    auth = await member_context(user=await request.auser())
    if auth is None:
        return await sync_to_async(render)(request, TEMPLATE, {"membership_missing": True}, status=403)
    context = {
        "tenant_slug": auth.tenant_slug,
        "models": await chat_models_visible(auth=auth),
        "ws_path": "/v1/ws/chat",
    }
    return await sync_to_async(render)(request, TEMPLATE, context)


@allow_methods("POST")
async def playground_feedback(request: HttpRequest) -> JsonResponse:
    """Rate a reply: `{"response_id": "chatcmpl-…", "rating": 1 | -1}` (session and CSRF token)."""
    user = await request.auser()
    try:
        if not user.is_authenticated:
            raise AuthenticationFailed("Log in to rate responses.", code="not_logged_in")
        auth = await member_context(user=user)
        if auth is None:
            raise PermissionDenied("Only members of a tenant can rate responses.", code="membership_required")
        payload = _json_object(request)
        feedback, created = await sync_to_async(feedback_upsert)(
            tenant_id=auth.tenant_id, response_id=_response_id(payload), rating=payload.get("rating")
        )
    except GatewayError as exc:
        return error_response(exc)
    return JsonResponse(
        {
            "response_id": feedback.response_id,
            "source": feedback.source,
            "rating": feedback.rating,
            "updated_at": feedback.updated_at.isoformat(),
        },
        status=201 if created else 200,
    )


async def chat_models_visible(*, auth: ApiKeyContext) -> list[str]:
    """The model names this member may chat with: `models_visible` without embedding models.

    A routing rule's name is a chat model when its route group has a chat deployment; a catalogue
    alias when one of its deployments is a chat model.
    """
    table = await routing_table_get()
    chat = {d.alias for d in table.catalog.models() if d.mode == CHAT_MODE}
    chat |= {rule.model for rule in table.rules if any(d.mode == CHAT_MODE for d in rule.group.deployments)}
    return sorted(name for name, _owner, _created in await models_visible(auth=auth) if name in chat)


def _json_object(request: HttpRequest) -> dict:
    try:
        payload = json.loads(request.body or b"null")
    except RequestDataTooBig as exc:
        raise PayloadTooLarge(f"Request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.") from exc
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return payload


def _response_id(payload: dict) -> str:
    response_id = payload.get("response_id")
    if not isinstance(response_id, str) or not response_id or len(response_id) > 100:
        raise InvalidRequest("'response_id' must be the response id of a reply (chatcmpl-…).", param="response_id")
    return response_id
