"""OpenAI's Files and Batches API for tenants: parse, call a service or a selector, serialize.

`POST /v1/files` (multipart: `file`, `purpose=batch`), `GET /v1/files`, `GET`/`DELETE
/v1/files/{id}`, `GET /v1/files/{id}/content`; `POST`/`GET /v1/batches`, `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`. Another tenant's file or batch is a 404, as a missing one.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from accounting.auth import ApiKeyContext, request_authenticate
from batches import selectors, services
from batches.formats import COMPLETION_WINDOWS, ENDPOINTS, batch_object, file_object, lines_parse
from batches.models import BatchFile
from batches.tasks import batch_run_task
from kernel.db_executor import db_call
from kernel.errors import GatewayError, InvalidRequest, NotFound, PayloadTooLarge, error_response
from kernel.http import allow_methods, read_body
from routing import pipeline, validation
from routing.responses_format import chat_payload, input_items, request_check

BATCH_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
MULTIPART_SLACK = 64 * 1024  # the form's other fields and boundaries around the file


def _file_not_found(file_id: str, param: str = "file_id") -> NotFound:
    return NotFound(f"No such File object: {file_id}", param=param)


def _limit(params, *, default: int, most: int) -> int:
    try:
        limit = int(params.get("limit") or default)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {most}.", param="limit")
    return limit


def _list(objects: list[dict], has_more: bool) -> JsonResponse:
    return JsonResponse({
        "object": "list", "data": objects, "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None, "has_more": has_more,
    })


# --- files ------------------------------------------------------------------------------------------


@csrf_exempt
@allow_methods("GET", "POST")
async def files(request: HttpRequest) -> HttpResponse:
    try:
        auth = await request_authenticate(request)
        if request.method == "POST":
            return JsonResponse(file_object(await _file_upload(request, auth)))
        limit = _limit(request.GET, default=10000, most=10000)
        rows, more = await db_call(selectors.files_page, tenant_id=auth.tenant_id,
                                   purpose=request.GET.get("purpose") or "", after=request.GET.get("after") or "",
                                   limit=limit)
    except GatewayError as exc:
        return error_response(exc)
    return _list([file_object(row) for row in rows], more)


async def _file_upload(request: HttpRequest, auth: ApiKeyContext) -> BatchFile:
    size = int(request.META.get("CONTENT_LENGTH") or 0)
    if size > settings.GATEWAY_BATCH_MAX_FILE_BYTES + MULTIPART_SLACK:
        raise PayloadTooLarge(f"The upload is {size} bytes; the largest batch file is "
                              f"{settings.GATEWAY_BATCH_MAX_FILE_BYTES} bytes (GATEWAY_BATCH_MAX_FILE_BYTES).")
    if not (request.content_type or "").startswith("multipart/form-data"):
        raise InvalidRequest("Send the file as multipart/form-data, with the fields 'file' and 'purpose'.")
    try:
        # Django's parser reads the body file (spooled to disk past FILE_UPLOAD_MAX_MEMORY_SIZE): a thread.
        form, uploads = await asyncio.to_thread(lambda: (request.POST, request.FILES))
    except MultiPartParserError as exc:
        raise InvalidRequest(f"The multipart body could not be read: {exc}.") from None
    upload = uploads.get("file")
    if upload is None:
        raise InvalidRequest("The field 'file' is missing.", param="file")
    if not form.get("purpose"):
        raise InvalidRequest("The field 'purpose' is missing; use 'batch'.", param="purpose")
    return await db_call(services.file_create, tenant_id=auth.tenant_id, upload=upload, purpose=form["purpose"])


@csrf_exempt
@allow_methods("GET", "DELETE")
async def file_detail(request: HttpRequest, file_id: str) -> HttpResponse:
    try:
        auth = await request_authenticate(request)
        if request.method == "DELETE":
            if not await db_call(services.file_delete, tenant_id=auth.tenant_id, file_id=file_id):
                raise _file_not_found(file_id)
            return JsonResponse({"id": file_id, "object": "file", "deleted": True})
        file = await db_call(selectors.file_get, tenant_id=auth.tenant_id, file_id=file_id)
        if file is None:
            raise _file_not_found(file_id)
    except GatewayError as exc:
        return error_response(exc)
    return JsonResponse(file_object(file))


@allow_methods("GET")
async def file_content(request: HttpRequest, file_id: str) -> HttpResponse:
    try:
        auth = await request_authenticate(request)
        file = await db_call(selectors.file_get, tenant_id=auth.tenant_id, file_id=file_id)
        if file is None:
            raise _file_not_found(file_id)
        data = await db_call(services.file_read, file)
    except GatewayError as exc:
        return error_response(exc)
    return HttpResponse(data, content_type="application/jsonl")


# --- batches ----------------------------------------------------------------------------------------


@csrf_exempt
@allow_methods("GET", "POST")
async def batches(request: HttpRequest) -> HttpResponse:
    try:
        auth = await request_authenticate(request)
        if request.method == "POST":
            return JsonResponse(batch_object(await _batch_create(request, auth)))
        limit = _limit(request.GET, default=20, most=100)
        rows, more = await db_call(selectors.batches_page, tenant_id=auth.tenant_id,
                                   after=request.GET.get("after") or "", limit=limit)
    except GatewayError as exc:
        return error_response(exc)
    return _list([batch_object(row) for row in rows], more)


def _batch_request(raw: bytes) -> dict:
    body = validation.json_body(raw, max_bytes=settings.GATEWAY_MAX_BODY_BYTES)
    unknown = sorted(set(body) - BATCH_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    if not isinstance(body.get("input_file_id"), str) or not body["input_file_id"]:
        raise InvalidRequest("'input_file_id' is required: the id of a file uploaded with purpose 'batch'.",
                             param="input_file_id")
    if body.get("endpoint") not in ENDPOINTS:
        raise InvalidRequest(f"'endpoint' must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    if body.get("completion_window") not in COMPLETION_WINDOWS:
        raise InvalidRequest("'completion_window' must be '24h'.", param="completion_window")
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in metadata.items())):
        raise InvalidRequest("'metadata' must be an object of at most 16 string values (keys up to 64 "
                             "characters, values up to 512).", param="metadata")
    return body


async def _batch_create(request: HttpRequest, auth: ApiKeyContext):
    body = _batch_request(read_body(request))
    file = await db_call(selectors.file_get, tenant_id=auth.tenant_id, file_id=body["input_file_id"])
    if file is None:
        raise _file_not_found(body["input_file_id"], param="input_file_id")
    if file.purpose != BatchFile.Purpose.BATCH:
        raise InvalidRequest(f"The file {file.id} has purpose '{file.purpose}'; a batch's input file has "
                             "purpose 'batch'.", param="input_file_id")
    lines = lines_parse(await db_call(services.file_read, file), endpoint=body["endpoint"])
    estimate = await _estimate(auth, body["endpoint"], [line.body for line in lines if line.body is not None])
    left = await db_call(selectors.budget_left, tenant_id=auth.tenant_id, key_id=auth.key_id)
    if left is not None and estimate > left.left:
        raise InvalidRequest(
            f"The batch's estimated cost, ${estimate:.6f}, exceeds what is left of the "
            f"{'API key' if left.scope == 'api_key' else 'tenant'}'s {left.period} budget: ${left.left:.6f} "
            f"of ${left.amount:.2f}. Lower the lines' max_tokens, split the file, or raise the budget.",
            param="input_file_id", code="budget_exceeded")
    batch = await db_call(services.batch_create, tenant_id=auth.tenant_id, key_id=auth.key_id, file=file,
                          endpoint=body["endpoint"], metadata=body.get("metadata"), estimate=estimate)
    await db_call(batch_run_task.delay, batch.pk)  # publishing to the broker blocks: a thread
    return batch


async def _estimate(auth: ApiKeyContext, endpoint: str, bodies: list[dict]) -> Decimal:
    """The most the lines could cost, each as the pipeline reserves a request's budget."""
    if endpoint == "/v1/responses":
        bodies = [chat for chat in (_responses_chat(body) for body in bodies) if chat is not None]
    return await pipeline.cost_ceiling(auth=auth, mode=ENDPOINTS[endpoint], bodies=bodies)


def _responses_chat(body: dict) -> dict | None:
    try:
        request_check(body)
        return chat_payload(body, items=input_items(body["input"]))
    except GatewayError:
        return None


@allow_methods("GET")
async def batch_detail(request: HttpRequest, batch_id: str) -> HttpResponse:
    try:
        auth = await request_authenticate(request)
        batch = await db_call(selectors.batch_get, tenant_id=auth.tenant_id, batch_id=batch_id)
        if batch is None:
            raise NotFound(f"No batch with id '{batch_id}'.", param="batch_id")
    except GatewayError as exc:
        return error_response(exc)
    return JsonResponse(batch_object(batch))


@csrf_exempt
@allow_methods("POST")
async def batch_cancel(request: HttpRequest, batch_id: str) -> HttpResponse:
    try:
        auth = await request_authenticate(request)
        batch = await db_call(services.batch_cancel, tenant_id=auth.tenant_id, batch_id=batch_id)
        await db_call(batch_run_task.delay, batch.pk)  # finalizes it at once if no worker runs it
    except GatewayError as exc:
        return error_response(exc)
    return JsonResponse(batch_object(batch))
