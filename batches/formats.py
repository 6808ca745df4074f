"""OpenAI's Batch API shapes: the input file's lines, the output and error files' lines, and the
File and Batch objects (https://platform.openai.com/docs/api-reference/batch)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from batches.models import Batch, BatchFile

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embedding", "/v1/responses": "chat"}
COMPLETION_WINDOWS = ("24h",)
CUSTOM_ID_MAX = 512


@dataclass(frozen=True)
class Line:
    """One line of an input file: its request body, or why it was refused (`error`)."""

    index: int  # from 1
    custom_id: str
    body: dict | None
    error: str = ""


def lines_parse(data: bytes, *, endpoint: str) -> list[Line]:
    """Every non-blank line of a batch input file: a request `{"custom_id", "method": "POST",
    "url": <the batch's endpoint>, "body": {...}}`, or the reason it is refused (a line that is
    not JSON, another url, a custom_id missing or seen before). The body itself is checked by the
    pipeline when the line runs, as a live request's."""
    lines, seen = [], set()
    for index, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            lines.append(Line(index, "", None, f"Line {index} is not valid JSON."))
            continue
        custom_id = request.get("custom_id") if isinstance(request, dict) else None
        error = _line_problem(request, endpoint=endpoint, seen=seen)
        custom_id = custom_id if isinstance(custom_id, str) else ""
        seen.add(custom_id)
        lines.append(Line(index, custom_id[:CUSTOM_ID_MAX], None if error else request["body"],
                          f"Line {index}: {error}" if error else ""))
    return lines


def _line_problem(request: object, *, endpoint: str, seen: set[str]) -> str:
    if not isinstance(request, dict):
        return "a line must be a JSON object with custom_id, method, url and body."
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > CUSTOM_ID_MAX:
        return f"'custom_id' must be a non-empty string of at most {CUSTOM_ID_MAX} characters."
    if custom_id in seen:
        return f"the custom_id '{custom_id}' is used by an earlier line; each line needs its own."
    if request.get("method") != "POST":
        return "'method' must be POST."
    if request.get("url") != endpoint:
        return f"'url' is {request.get('url')!r}, but this batch's endpoint is {endpoint!r}."
    if not isinstance(request.get("body"), dict):
        return "'body' must be a JSON object (the request's body)."
    return ""


def output_line(*, line_id: str, custom_id: str, request_id: str, status: int, body: dict) -> dict:
    """A line of the output file (a success) or of the error file (a request the API refused)."""
    return {"id": line_id, "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}


def error_line(*, line_id: str, custom_id: str, code: str, message: str, line: int | None = None) -> dict:
    """A line of the error file for a request that was never sent (refused, expired, cancelled)."""
    error = {"code": code, "message": message}
    if line is not None:
        error["line"] = line
    return {"id": line_id, "custom_id": custom_id or None, "response": None, "error": error}


def _timestamp(value) -> int | None:
    return int(value.timestamp()) if value is not None else None


def file_object(file: BatchFile) -> dict:
    return {
        "id": file.id, "object": "file", "bytes": file.bytes, "created_at": _timestamp(file.created_at),
        "filename": file.filename, "purpose": file.purpose, "status": "processed", "status_details": None,
        "expires_at": None,
    }


def batch_object(batch: Batch) -> dict:
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_key, "completion_window": batch.completion_window,
        "status": batch.status, "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": _timestamp(batch.created_at), "in_progress_at": _timestamp(batch.in_progress_at),
        "expires_at": _timestamp(batch.expires_at), "finalizing_at": _timestamp(batch.finalizing_at),
        "completed_at": _timestamp(batch.completed_at), "failed_at": _timestamp(batch.failed_at),
        "expired_at": _timestamp(batch.expired_at), "cancelling_at": _timestamp(batch.cancelling_at),
        "cancelled_at": _timestamp(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata,
    }
