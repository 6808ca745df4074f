"""Structured logs: one JSON object per line, each carrying the request id of its request.

`JsonFormatter` (python-json-logger) writes `time`, `level`, `logger`, `message`, `request_id`
(the correlation id, see `kernel.request_ids`), `gateway_request_id` (the UsageRecord's id)
and the fields a call passes in `extra`. What must never be in a log line is kept out where it is
logged: provider keys, tenant keys and prompts are not passed to loggers (the request line carries
the prompt only for tenants that keep content). As a second line of defence the formatter blanks
anything shaped like a key or a query-string credential (`kernel.redact`), and drops the
`request` object Django attaches to its own records (its repr is harmless today; its attributes
are not).
"""

from __future__ import annotations

import json
import logging

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter
from pythonjsonlogger.orjson import orjson_default

from kernel.redact import secrets_redact
from kernel.request_ids import request_ids_current

NOT_LOGGED = ("request", "scope", "headers", "color_message")  # color_message: uvicorn's ANSI copy


def _serialize(log_data: dict, *, default=None, cls=None, indent=None, ensure_ascii=True) -> str:
    """orjson for a log line (a few times faster than `json`); `json` for what orjson refuses."""
    try:
        return orjson.dumps(log_data, default=orjson_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(log_data, default=default, cls=cls, indent=indent, ensure_ascii=ensure_ascii)


class RequestIdFilter(logging.Filter):
    """Adds the current request's ids to every record (attach it to the handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = request_ids_current()
        if ids is not None and not hasattr(record, "request_id"):
            record.request_id = ids.correlation_id
            record.gateway_request_id = str(ids.request_id)
        return True


class JsonFormatter(_JsonFormatter):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, *NOT_LOGGED])
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", "time")  # ISO 8601, UTC
        kwargs.setdefault("json_serializer", _serialize)
        super().__init__(*args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        return secrets_redact(super().format(record))


class PlainFormatter(logging.Formatter):
    """`GATEWAY_LOG_FORMAT=plain` (`make run`): one short line for a terminal, redacted alike.

    The time of day, the level, the logger and the message, then the figures a request line
    carries (model, tokens, cost, latency) as `name=value`, and the correlation id when there is
    one: `21:40:01 INFO routing.record request chat_completions ok tenant=demo model=gpt-4o-mini
    tokens=12+30 cost=$0.000020 latency=35ms [5f0c…]`.
    """

    FIGURES = (("tenant", "tenant={}"), ("model", "model={}"), ("error_class", "error={}"),
               ("cost_usd", "cost=${}"), ("latency_ms", "latency={}ms"), ("duration_ms", "{:.0f}ms"))

    def __init__(self, fmt: str | None = None, datefmt: str | None = "%H:%M:%S", **kwargs) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s %(message)s", datefmt=datefmt, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        parts = [super().format(record)]
        if getattr(record, "prompt_tokens", None) is not None:
            parts.append(f"tokens={record.prompt_tokens}+{record.completion_tokens}")
        parts += [text.format(getattr(record, name)) for name, text in self.FIGURES
                  if getattr(record, name, None) not in (None, "")]
        if getattr(record, "request_id", None):
            parts.append(f"[{record.request_id}]")
        return secrets_redact(" ".join(parts))


def request_line(*, call_fields: dict, tenant: str, http_status: int, attempts: int,
                 prompt: object = None) -> dict:
    """The `extra` of the one log line per request, from its UsageRecord fields: no content
    unless `prompt` is given (the tenant keeps content)."""
    line = {
        "tenant": tenant,
        "endpoint": call_fields["endpoint"],
        "model": call_fields["requested_model"],
        "provider": call_fields["provider_name"] or None,
        "served_model": call_fields["served_model"] or None,
        "status": call_fields["status"],
        "http_status": http_status,
        "error_class": call_fields.get("error_class") or None,
        "prompt_tokens": call_fields["prompt_tokens"],
        "completion_tokens": call_fields["completion_tokens"],
        "cost_usd": str(call_fields["cost_usd"]),
        "latency_ms": call_fields["latency_ms"],
        "ttft_ms": call_fields["ttft_ms"],
        "stream": call_fields["stream"],
        "attempts": attempts,
        "route": call_fields.get("route") or None,
        "cache": call_fields.get("cache") or None,
    }
    if prompt is not None:
        line["prompt"] = prompt
    return line
