"""The record step: one UsageRecord per request, written with its budget settlement."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from django.db import InterfaceError, OperationalError
from django.utils import timezone

from accounting import tokens
from accounting.pricing import cost_compute, units_cost
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


@dataclass(frozen=True)
class Counted:
    """A request's tokens, and which sides the gateway counted itself."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_estimated: bool = False
    completion_estimated: bool = False


def usage_counted(call: Call, *, read_text: str) -> Counted:
    """The request's tokens, side by side: the provider's final counts; else what it had counted
    when the stream ended (`Call.usage_so_far`: Anthropic's input tokens from `message_start`,
    Gemini's running counts); else the gateway's count of that side: the prompt by
    `Call.estimated_prompt_tokens`, the completion from `read_text`, the text read from the
    provider up to the end (tiktoken, `accounting.tokens`)."""
    if call.usage is not None:
        usage = call.usage
        return Counted(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    so_far = call.usage_so_far
    prompt, completion = so_far.get("prompt_tokens"), so_far.get("completion_tokens")
    details = so_far.get("prompt_tokens_details")
    return Counted(
        prompt_tokens=call.estimated_prompt_tokens() if prompt is None else int(prompt),
        completion_tokens=tokens.text_tokens(read_text) if completion is None else int(completion),
        cached_tokens=int((details.get("cached_tokens") if isinstance(details, dict) else 0) or 0),
        prompt_estimated=prompt is None,
        completion_estimated=completion is None,
    )


def _reached(call: Call, *, status: str, read_text: str) -> bool:
    """Whether a provider took the request, which is what it bills: it answered (in part: a stream
    cut after its first token; or counted something), or accepted the stream's request (a success
    status) before the stream was cancelled or failed. A request that never reached a provider, or
    whose provider answered an error or nothing yet, costs nothing."""
    if call.deployment is None:
        return False
    if status == "success" or call.usage is not None or call.usage_so_far or read_text:
        return True
    return call.accepted


async def record_failure(call: Call, exc: GatewayError) -> None:
    await record(call, status="error", http_status=exc.status, error_class=exc.error_class)


async def record_cancelled(call: Call) -> None:
    """A request cancelled before its answer: the client left (499) or a worker's shutdown
    deadline cut it (503, what the client is sent); its prompt counts only if a provider had
    accepted it (`_reached`)."""
    await record(call, status="cancelled", http_status=shutdown_status(), error_class=cancel_reason())


async def record(
    call: Call,
    *,
    status: str,
    completion_text: str = "",
    read_text: str | None = None,
    http_status: int = 200,
    error_class: str = "",
) -> None:
    """Write the request's one UsageRecord; a client that goes away cannot cancel the write.

    `completion_text` is the answer the client was sent (kept as content); `read_text`, what was
    read from the provider (before guardrails' holds and redactions, up to a cut or a cancel),
    is what an estimate of the completion counts; by default the same."""
    if call.recorded or call.auth is None:
        return
    call.recorded = True
    fields = _record_fields(
        call, status=status, completion_text=completion_text,
        read_text=completion_text if read_text is None else read_text,
    )
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
        response_id=call.response_id if call.has_response_id else "", events=events,
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
    if call.keep is not None:
        try:
            await call.keep(call, RecordWrite(fields=dict(fields), budgets=call.budgets, reservation=call.reservation))
        except Exception:  # noqa: BLE001 - the record is written all the same
            logger.exception("request %s: its caller could not keep its record", call.request_id)
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


def _record_fields(call: Call, *, status: str, completion_text: str, read_text: str) -> dict:
    reached = _reached(call, status=status, read_text=read_text)
    counted = usage_counted(call, read_text=read_text) if reached or call.usage is not None else Counted()
    cost = Decimal("0")
    units = call.units if reached else None
    if reached:
        price = call.deployment.price_at(time.time())
        cost = cost_compute(
            price=price,
            prompt_tokens=counted.prompt_tokens,
            completion_tokens=counted.completion_tokens,
            cached_tokens=counted.cached_tokens,
        ) + units_cost(price=price, units=units)
    deployment = call.deployment
    return {
        "request_id": call.request_id,
        # Pinned here, not left to the write: every write of the record (a retry after a lost
        # connection, the journal's replay, a batch line's resume) carries the same time, so the
        # record's uniqueness (request_id, created_at) refuses the second one.
        "created_at": timezone.now(),
        "response_id": call.response_id if call.has_response_id else "",
        "tenant_id": call.auth.tenant_id,
        "api_key_id": call.auth.key_id or None,  # 0: a dashboard user in the playground
        "endpoint": call.endpoint,
        "requested_model": call.requested_model,
        "provider_id": deployment.target.provider_id if deployment else None,
        "provider_name": deployment.target.provider_name if deployment else "",
        "served_model": deployment.target.upstream_model if deployment else "",
        "prompt_tokens": counted.prompt_tokens,
        "completion_tokens": counted.completion_tokens,
        "usage_estimated": counted.prompt_estimated or counted.completion_estimated,
        "prompt_tokens_estimated": counted.prompt_estimated,
        "completion_tokens_estimated": counted.completion_estimated,
        "cost_usd": cost,
        "latency_ms": call.elapsed_ms(),
        "ttft_ms": call.ttft_ms,
        "stream": call.stream,
        "status": status,
        "attempts": call.log.entries,
        "end_user": str(call.payload.get("user") or "")[:256],
        "cached_tokens": counted.cached_tokens,
        "units": units.count if units is not None else _ZERO,
        "unit_kind": units.kind if units is not None else "",
        "task": call.task[:100],
        "tags": list(call.tags),
        "route": call.plan.rule if call.plan else "",
        "route_group": (call.plan.group.name or "") if call.plan else "",
        "experiment": call.plan.experiment if call.plan else "",
        "variant": call.plan.variant if call.plan else "",
        "conversation_id": call.conversation_id,
        "routing_strategy": call.plan.strategy if call.plan else "",
        "routing_propensity": call.plan.propensity(deployment) if call.plan and deployment else None,
        "cache": call.cache.state if call.cache is not None else "",
        "saved_cost_usd": call.cache.saved_cost_usd if call.cache is not None else _ZERO,
        "reserved_usd": call.reservation.amount if call.reservation is not None else None,
        "content": _content(call, completion_text) if call.auth.keep_content else None,
    }


def _content(call: Call, completion_text: str) -> dict:
    """What a tenant that keeps content keeps: the request's messages (or input) and the answer."""
    if call.media is not None:
        messages = call.media.texts(call.payload) if call.payload else []  # {}: refused before it was valid
    elif call.endpoint == "embeddings":
        source = call.payload.get("input")
        messages = source if isinstance(source, list) else [source]
    else:
        messages = call.payload.get("messages") or []
    return {"messages": messages, "completion": completion_text}
