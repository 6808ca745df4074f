"""`POST /v1/feedback` and `GET /v1/feedback`: parse, call the feedback services, serialize."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounting.auth import request_authenticate
from feedback.services import (
    CONVERSATION_ID_MAX,
    RESPONSE_ID_MAX,
    feedback_read,
    feedback_submit,
    submission_parse,
)
from kernel.db_executor import db_call
from kernel.errors import GatewayError, InvalidRequest, error_response
from kernel.http import allow_methods, read_body


@csrf_exempt
@allow_methods("GET", "POST")
async def feedback(request: HttpRequest) -> HttpResponse:
    try:
        auth = await request_authenticate(request)
        if request.method == "GET":
            return JsonResponse(await db_call(feedback_read, tenant_id=auth.tenant_id, **_query(request.GET)))
        submission = submission_parse(_json(read_body(request)))
        body, created = await db_call(feedback_submit, tenant_id=auth.tenant_id, submission=submission)
    except GatewayError as exc:
        return error_response(exc)
    return JsonResponse(body, status=201 if created else 200)


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from exc


def _query(params) -> dict:
    response_id = params.get("response_id") or ""
    conversation_id = params.get("conversation_id") or ""
    if bool(response_id) == bool(conversation_id):
        raise InvalidRequest("Give exactly one of 'response_id' and 'conversation_id'.", param="response_id")
    if len(response_id) > RESPONSE_ID_MAX or len(conversation_id) > CONVERSATION_ID_MAX:
        raise InvalidRequest("The id is too long.", param="response_id" if response_id else "conversation_id")
    return {"response_id": response_id, "conversation_id": conversation_id}
