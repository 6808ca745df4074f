"""The record step: one UsageRecord per request, written with its budget settlement."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from decimal import Decimal

from django.db import InterfaceError, OperationalError

from accounting import tokens
from accounting.pricing import cost_compute
from accounting.quotas import rate_limit_settle, rate_limit_settle_now
from accounting.services import RecordWrite
from accounting.writes import record_write
from kernel.after_response import after_response
from kernel import metrics
from kernel.errors import GatewayError
from kernel.graceful import cancel_reason, shutdown_status
from kernel.logs import request_line
from kernel.loops import background
from guardrails.services import guardrail_events_start, guardrail_events_wait
from routing.call import Call
from routing.journal import journal

logger = logging.getLogger(__name__)

# How long a record write is retried while the database is unreachable (docs/reliability.md).
RECORD_RETRY_SECONDS = 60.0
_ZERO = Decimal("0")


def completion_estimate(completion_text: str) -> int:
    return tokens.text_tokens(completion_text)


async def record_failure(call: Call, exc: GatewayError) -> None:
    await record(call, status="error", http_status=exc.status, error_class=exc.error_class)


async def record_cancelled(call: Call) -> None:
    """A request cancelled before its answer: the client left (499) or a worker's shutdown
    deadline cut it (503, what the client is sent); prompt tokens count if a provider had it."""
    await record(call, status="cancelled", http_status=shutdown_status(), error_class=cancel_reason())


async def record(
    call: Call,
    *,
    status: str,
    completion_text: str = "",
    http_status: int = 200,
    error_class: str = "",
) -> None:
    """Write the request's one UsageRecord; a client that goes away cannot cancel the write."""
    if call.recorded or call.auth is None:
        return
    call.recorded = True
    fields = _record_fields(call, status=status, completion_text=completion_text)
    call.cost_usd = fields["cost_usd"]
    call.recorded_tokens = (fields["prompt_tokens"], fields["completion_tokens"])
    fields.update(http_status=http_status, error_class=error_class)
    after_response(functools.partial(_observe, call, fields, status=status, http_status=http_status))
    guard_write = _guard_events_start(call)  # started first: a client leaving cannot cancel it
    first_try = asyncio.Event()
    background(_record_commit(call, fields, first_try), what="usage record write")
    if call.charge is not None and call.charge.token_limits:
        # In process when a lease covers it; else not waited for: the next request of this process
        # queues behind it for Redis anyway (`RedisConnections.script` keeps one loop's calls in
        # order), and a client that goes away no longer skips it.
        actual = fields["prompt_tokens"] + fields["completion_tokens"]
        left = rate_limit_settle_now(charge=call.charge, actual_tokens=actual)
        if left:
            background(rate_limit_settle(charge=call.charge, actual_tokens=actual, limits=left),
                       what="rate limit settle")
    # Normally the record is written when this returns; while the database does not answer, the
    # client gets its answer and the write goes on in the background (`_record_commit`).
    await first_try.wait()
    await guardrail_events_wait(guard_write)


def _guard_events_start(call: Call):
    """Hand the request's guardrail events to their writer; later checks (none are expected after
    the record) would start a new list."""
    if not call.guard_events:
        return None
    events, call.guard_events = call.guard_events, []
    return guardrail_events_start(
        tenant_id=call.auth.tenant_id, request_id=call.request_id,
        response_id=call.response_id if call.endpoint != "embeddings" else "", events=events,
    )


def _observe(call: Call, fields: dict, *, status: str, http_status: int) -> None:
    """The request's metrics and its one log line (after the response: `after_response`)."""
    metrics.request_observe(tenant=call.auth.tenant_slug, routed=call.plan is not None, fields=fields)
    logger.info("request %s %s", call.endpoint, status, extra=request_line(
        call_fields=fields, tenant=call.auth.tenant_slug, http_status=http_status,
        attempts=call.log.attempts, prompt=(fields.get("content") or {}).get("messages"),
    ))


async def _record_commit(call: Call, fields: dict, first_try: asyncio.Event) -> None:
    """Write the record, retried while the database is unreachable (for `RECORD_RETRY_SECONDS`),
    so a request answered during a short outage still gets its one record and settles its
    reservation. A write that committed before its connection died is not written twice: the
    retry fails on the record's unique `request_id`."""
    delay, deadline = 0.25, time.monotonic() + RECORD_RETRY_SECONDS
    kept = False  # in this worker's journal (`routing.journal`), which outlives the worker
    while True:
        try:
            write = RecordWrite(fields=dict(fields), budgets=call.budgets, reservation=call.reservation)
            await record_write(write)
            if kept:
                journal.written(call.request_id)
            return
        except (OperationalError, InterfaceError):
            if time.monotonic() + delay > deadline:
                if kept:
                    journal.release()  # the next replay writes it
                raise
            if delay == 0.25:
                logger.warning("usage record %s not written (database unavailable); retrying", call.request_id)
                kept = journal.keep(write)
        finally:
            first_try.set()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def _record_fields(call: Call, *, status: str, completion_text: str) -> dict:
    # Tokens are billed when a provider answered, even in part (a stream cut after its first
    # token); a request that never reached one costs nothing.
    answered = status != "error" or call.usage is not None or bool(completion_text)
    served = call.deployment if answered else None
    estimated = call.usage is None and served is not None
    if call.usage is not None:
        prompt, completion = call.usage.prompt_tokens, call.usage.completion_tokens
    elif served is not None:
        prompt, completion = call.estimated_prompt_tokens(), completion_estimate(completion_text)
    else:
        prompt = completion = 0
    cached = call.usage.cached_tokens if call.usage is not None else 0
    cost = Decimal("0")
    if served is not None:
        cost = cost_compute(
            price=served.price_at(time.time()),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
        )
    deployment = call.deployment
    return {
        "request_id": call.request_id,
        "response_id": call.response_id if call.endpoint != "embeddings" else "",
        "tenant_id": call.auth.tenant_id,
        "api_key_id": call.auth.key_id or None,  # 0: a dashboard user in the playground
        "endpoint": call.endpoint,
        "requested_model": call.requested_model,
        "provider_id": deployment.target.provider_id if deployment else None,
        "provider_name": deployment.target.provider_name if deployment else "",
        "served_model": deployment.target.upstream_model if deployment else "",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "usage_estimated": estimated,
        "cost_usd": cost,
        "latency_ms": call.elapsed_ms(),
        "ttft_ms": call.ttft_ms,
        "stream": call.stream,
        "status": status,
        "attempts": call.log.entries,
        "end_user": str(call.payload.get("user") or "")[:256],
        "cached_tokens": cached,
        "task": call.task[:100],
        "tags": list(call.tags),
        "route": call.plan.rule if call.plan else "",
        "route_group": (call.plan.group.name or "") if call.plan else "",
        "experiment": call.plan.experiment if call.plan else "",
        "variant": call.plan.variant if call.plan else "",
        "conversation_id": call.conversation_id,
        "cache": call.cache.state if call.cache is not None else "",
        "saved_cost_usd": call.cache.saved_cost_usd if call.cache is not None else _ZERO,
        "content": _content(call, completion_text) if call.auth.keep_content else None,
    }


def _content(call: Call, completion_text: str) -> dict:
    """What a tenant that keeps content keeps: the request's messages (or input) and the answer."""
    if call.endpoint == "embeddings":
        source = call.payload.get("input")
        messages = source if isinstance(source, list) else [source]
    else:
        messages = call.payload.get("messages") or []
    return {"messages": messages, "completion": completion_text}
