"""A batch's run, in a Celery worker: its lines sent through the gateway's own pipeline.

Each line is one request of the batch's API key through `routing.pipeline` (`chat`, `embeddings`,
or the Responses door's translation into `chat`): routing rules, failover, breakers, budgets and
reservations, the tenant's rate limits, guardrails, the cache, and one UsageRecord per line whose
`request_id` is the line's (its tags carry `batch:<id>`). Nothing is run twice
(docs/batches.md, "Exactly once"):

- a line is claimed (`running`, committed) before it is sent. Just before its UsageRecord is
  written, the record step hands the line its answer and the record's write (`Call.keep`), which
  the line keeps; once the record is written, the line is finished (`done`, its output line);
- one runner holds a batch at a time (`lease_take`), renewing its lease while it runs; a worker
  that dies stops renewing it, and the next runner (`batches.tasks`) takes over once it has run
  out. A line left `running` with a kept answer gets its record written if it is missing (the
  one write, `accounting.writes.record_write`; the record's unique request id keeps it single)
  and is finished with that answer; a line without one was never answered, and is sent again under
  a new attempt (a new request id);
- a cancel makes the batch `cancelling`: no line is claimed after it, the lines in flight finish.

Batch lines yield to live traffic: before its pipeline call a line takes from buckets of its own
(`batch:<scope>`), GATEWAY_BATCH_RATE_SHARE of each of the tenant's and key's rpm and tpm limits,
waiting while they are empty; and at most GATEWAY_BATCH_MAX_IN_FLIGHT lines of a batch are in
flight at a time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from dataclasses import dataclass, replace

import orjson
from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from accounting import tokens
from accounting.auth import api_key_authenticate_hashed
from accounting.services import RecordWrite
from accounting.writes import record_write
from accounting.quotas import Charge, RateLimited, RateLimitRule, rate_limit_settle, rate_limit_take, rate_limits_for
from batches.formats import error_line, lines_parse, output_line
from batches.models import Batch, BatchLine
from batches.services import (
    batch_fail,
    batch_finalize,
    file_read,
    lease_release,
    lease_take,
    line_claim,
    line_finish,
    line_item_id,
    line_release,
    line_retry,
    line_keep,
    line_resend,
    lines_create,
    lines_running,
    record_exists,
)
from kernel import db_async, request_ids
from kernel.db_executor import db_call
from kernel.errors import DatabaseUnavailable, GatewayError, InvalidRequest
from kernel.loops import background_wait
from routing import pipeline, responses_api
from routing.call import Call
from routing.journal import write_dumps, write_loads
from routing.responses_format import Echo, response_object

logger = logging.getLogger(__name__)

# How long a runner's hold on a batch lasts unless renewed (every third of it): a worker that died
# holds its batches this long at most.
LEASE_SECONDS = 6.0
# The longest a line waits at once for its share of the rate limits before looking again.
SHARE_WAIT_SECONDS = 5.0


@dataclass
class Run:
    batch: Batch
    owner: str
    stop: asyncio.Event
    credential: functools.partial | None = None  # the batch key's, once it runs lines


async def batch_run(batch_id: str, *, owner: str) -> None:
    """Run (or resume, or finalize) a batch if no other runner holds it."""
    if not await db_call(lease_take, batch_id=batch_id, owner=owner, seconds=LEASE_SECONDS):
        return
    try:
        run = Run(batch=await _batch(batch_id), owner=owner, stop=asyncio.Event())
        renewing = asyncio.create_task(_lease_renew(run))
        try:
            await _run(run)
        finally:
            renewing.cancel()
    finally:
        await background_wait()  # the lines' records and settlements
        await db_call(lease_release, batch_id=batch_id, owner=owner)
        await db_async.close()


async def _batch(batch_id: str) -> Batch:
    return await db_call(lambda: Batch.objects.select_related("api_key", "input_file").get(pk=batch_id))


async def _run(run: Run) -> None:
    batch = run.batch
    if batch.status == Batch.Status.VALIDATING:
        await _validate(batch)
        run.batch = batch = await _batch(batch.pk)
    if batch.status in (Batch.Status.IN_PROGRESS, Batch.Status.CANCELLING, Batch.Status.FINALIZING):
        for line in await db_call(lines_running, batch_id=batch.pk):  # a dead worker's
            await _line_recover(batch, line)
    if batch.status == Batch.Status.IN_PROGRESS:
        run.credential = functools.partial(api_key_authenticate_hashed, hashed_key=batch.api_key.hashed_key)
        await asyncio.gather(*(_lines_send(run) for _ in range(settings.GATEWAY_BATCH_MAX_IN_FLIGHT)))
        run.batch = batch = await _batch(batch.pk)
    if run.stop.is_set() or batch.status not in Batch.ACTIVE:
        return  # its lease was lost: the next runner finishes it
    if batch.status == Batch.Status.IN_PROGRESS and not await db_call(_finished, batch):
        return
    await db_call(batch_finalize, batch_id=batch.pk)


def _finished(batch: Batch) -> bool:
    """Whether a batch in progress is done with sending: no line left, or its window is over."""
    left = BatchLine.objects.filter(batch_id=batch.pk).exclude(state=BatchLine.State.DONE).exists()
    return not left or batch.expires_at <= timezone.now()


async def _validate(batch: Batch) -> None:
    """`validating`: the input file read and its lines created, or the batch failed with why."""
    if batch.input_file is None:
        await db_call(batch_fail, batch_id=batch.pk, errors=[{
            "code": "file_not_found", "message": f"The input file {batch.input_file_key} was deleted.",
            "param": "input_file_id", "line": None}])
        return
    data = await db_call(file_read, batch.input_file)
    lines = lines_parse(data, endpoint=batch.endpoint)
    await db_call(lines_create, batch_id=batch.pk, lines=lines)


async def _lease_renew(run: Run) -> None:
    while True:
        await asyncio.sleep(LEASE_SECONDS / 3)
        try:
            held = await db_call(lease_take, batch_id=run.batch.pk, owner=run.owner, seconds=LEASE_SECONDS)
        except Exception:  # noqa: BLE001 - a database hiccup: the next renewal tries again
            logger.warning("batch %s: lease renewal failed", run.batch.pk, exc_info=True)
            continue
        if not held:
            logger.warning("batch %s: lease lost; stopping", run.batch.pk)
            run.stop.set()
            return


async def _lines_send(run: Run) -> None:
    """One of the batch's slots: claim a line, wait for its share of the limits, send, finish."""
    while not run.stop.is_set():
        line = await db_call(line_claim, batch_id=run.batch.pk, owner=run.owner)
        if line is None:
            return
        go, charge = await _share_take(run, line)
        if not go:
            await db_call(line_release, line_id=line.pk)
            return
        outcome = await _line_send(run, line, charge)
        if outcome is None:
            continue
        await db_call(line_finish, line_id=line.pk, ok=outcome[0], result=outcome[1])


# --- the rate share ---------------------------------------------------------------------------------


def _share(rules: tuple[RateLimitRule, ...]) -> tuple[RateLimitRule, ...]:
    """The batch buckets of a tenant's (and key's) limits: GATEWAY_BATCH_RATE_SHARE of each."""
    share = settings.GATEWAY_BATCH_RATE_SHARE

    def part(value: int | None) -> int | None:
        return max(1, math.floor(value * share)) if value else None

    return tuple(replace(rule, scope=f"batch:{rule.scope}", rpm=part(rule.rpm), tpm=part(rule.tpm),
                         queue_seconds=0) for rule in rules)


def _line_tokens(endpoint: str, body: dict) -> int:
    """The tokens a line takes from a tpm bucket, as the pipeline counts a request's: its prompt
    and the output it asks for at most."""
    try:
        if endpoint == "/v1/embeddings":
            return tokens.embedding_input_tokens(body.get("input"))
        if endpoint == "/v1/responses":
            prompt = tokens.text_tokens(json.dumps(body.get("input")))
            return prompt + int(body.get("max_output_tokens") or 0)
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        return tokens.prompt_tokens(body.get("messages") or []) + int(cap)
    except (TypeError, ValueError, AttributeError):
        return 0  # a body the pipeline will refuse


async def _share_take(run: Run, line: BatchLine) -> tuple[bool, Charge | None]:
    """Wait until the line fits in the batch share of the limits: (go, what it took). Not `go` if
    the batch stopped meanwhile (cancelled, expired, its lease lost): the line goes back unsent."""
    rules = _share(await rate_limits_for(tenant_id=run.batch.tenant_id, key_id=run.batch.api_key_id))
    if not rules:
        return True, None
    amount = _line_tokens(run.batch.endpoint, line.body or {})
    while True:
        try:
            _, charge = await rate_limit_take(rules=rules, tokens=amount)
        except RateLimited as exc:
            retry_after = exc.headers.get("retry-after")
            if retry_after is None:
                return True, None  # more tokens than the share holds at all: the tenant's own limit decides
            await asyncio.sleep(min(float(retry_after), SHARE_WAIT_SECONDS))
            if run.stop.is_set() or not await db_call(_still_running, run):
                return False, None
            continue
        return True, charge


def _still_running(run: Run) -> bool:
    return Batch.objects.filter(pk=run.batch.pk, status=Batch.Status.IN_PROGRESS, lease_owner=run.owner,
                                expires_at__gt=timezone.now()).exists()


# --- one line ---------------------------------------------------------------------------------------


async def _line_send(run: Run, line: BatchLine, charge: Charge | None) -> tuple[bool, dict] | None:
    """The line through the pipeline: (ok, its output or error line), or None when the tenant's
    own rate limit refused it (live traffic took the rest) and it waits to be sent again."""
    batch = run.batch
    # The line's request id is its correlation id too: its logs, and the `x-request-id` its
    # provider is sent (a provider's own request log shows each attempt of a line once).
    request_ids.request_ids_begin(str(line.request_id))
    call, door = _door(batch, line)
    call.tags = (f"batch:{batch.pk}",)  # a line refused before its route hints are read is tagged too
    call.keep = functools.partial(_keep, line.pk)
    headers = {"x-gateway-tags": f"batch:{batch.pk}"}
    try:
        body = await door(call, _tagged(line.body, batch.pk), headers, run.credential)
    except RateLimited as exc:
        await db_call(line_retry, line_id=line.pk)
        await asyncio.sleep(min(float(exc.headers.get("retry-after") or 1), SHARE_WAIT_SECONDS))
        return None
    except DatabaseUnavailable:
        raise  # the line stays running: the next runner resumes it
    except GatewayError as exc:
        return False, _result(line, call, status=exc.status, body=exc.as_body())
    except Exception:  # noqa: BLE001 - the pipeline recorded it; the line gets the API's 500
        logger.exception("batch %s line %s failed", batch.pk, line.index)
        error = GatewayError("The gateway failed to handle this request.")
        return False, _result(line, call, status=error.status, body=error.as_body())
    finally:
        await _share_settle(charge, call)
    return True, _result(line, call, status=200, body=body)


def _result(line: BatchLine, call: Call, *, status: int, body: dict) -> dict:
    return output_line(line_id=line_item_id(line), custom_id=line.custom_id, request_id=str(call.request_id),
                       status=status, body=body)


async def _share_settle(charge: Charge | None, call: Call) -> None:
    if charge is not None and charge.token_limits:
        await rate_limit_settle(charge=charge, actual_tokens=sum(call.recorded_tokens))


def _tagged(body: dict, batch_id: str) -> dict:
    """The line's body with the batch's tag added to its own tags, when it names some (the
    `x-gateway-tags` header carries it otherwise: `routing.selection.route_hints`)."""
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("tags"), str) and metadata["tags"].strip():
        return {**body, "metadata": {**metadata, "tags": f"{metadata['tags']},batch:{batch_id}"}}
    return body


def _no_stream(body: dict) -> dict:
    if body.get("stream") is True:
        raise InvalidRequest("A batch line cannot be streamed: leave 'stream' out.", param="stream")
    return body


def _door(batch: Batch, line: BatchLine):
    """The line's Call and how it is sent, by the batch's endpoint."""
    if batch.endpoint == "/v1/embeddings":
        return Call(endpoint="embeddings", request_id=line.request_id), _embeddings
    if batch.endpoint == "/v1/responses":
        return Call(endpoint="responses", response_prefix="resp_", request_id=line.request_id), _responses
    return Call(endpoint="chat.completions", request_id=line.request_id), _chat


async def _chat(call: Call, body: dict, headers: dict, credential) -> dict:
    return await pipeline.chat(call, credential=credential, parse=lambda: _no_stream(body), headers=headers)


async def _embeddings(call: Call, body: dict, headers: dict, credential) -> dict:
    return await pipeline.embeddings(call, credential=credential, parse=lambda: body, headers=headers)


async def _responses(call: Call, body: dict, headers: dict, credential) -> dict:
    """The Responses door's own translation, without storing the response (a batch's answers are
    in its output file)."""
    conversation = responses_api.Conversation()
    answer = await pipeline.chat(
        call, credential=credential, headers=headers,
        parse=lambda: responses_api.responses_parse(call, {**_no_stream(body), "store": False}, conversation),
    )
    return response_object(answer, echo=responses_api.responses_echo(call, conversation))


# --- a worker that died: its lines in flight ------------------------------------------------------


async def _keep(line_id: int, call: Call, write: RecordWrite) -> None:
    """The record step's hook (`Call.keep`): the line's answer and its record's write, kept in the
    line just before the record is written."""
    kept = {"write": orjson.loads(write_dumps(write)), "answer": call.answer}
    await db_call(line_keep, line_id=line_id, kept=kept)


async def _line_recover(batch: Batch, line: BatchLine) -> None:
    """A line its dead worker left `running`. Kept (its record was about to be written, or was):
    its record written if it is missing, and the line finished with the answer kept. Not kept: never
    answered, so sent again, under a new attempt; unless its record exists all the same (its keep
    failed): then it fails rather than be sent and billed twice."""
    if line.kept is not None:
        write = write_loads(orjson.dumps(line.kept["write"]))
        if not await db_call(record_exists, request_id=line.request_id):
            try:
                await record_write(write)
            except IntegrityError:
                pass  # written meanwhile
        await db_call(line_finish, line_id=line.pk, **_kept_result(batch, line, write))
        return
    if not await db_call(record_exists, request_id=line.request_id):
        await db_call(line_resend, line_id=line.pk)
        return
    await db_call(line_finish, line_id=line.pk, ok=False, result=error_line(
        line_id=line_item_id(line), custom_id=line.custom_id, code="line_interrupted",
        message=f"The request was answered and billed (usage record {line.request_id}), but the worker "
                "running the batch stopped before its answer was kept."))


def _kept_result(batch: Batch, line: BatchLine, write: RecordWrite) -> dict:
    fields, answer = write.fields, line.kept["answer"]
    request_id = str(line.request_id)
    common = {"line_id": line_item_id(line), "custom_id": line.custom_id, "request_id": request_id}
    if fields["status"] == "success" and answer is not None:
        if batch.endpoint == "/v1/responses":
            echo = Echo(response_id=f"resp_{line.request_id.hex}", body={**line.body, "store": False},
                        model=fields.get("served_model") or fields.get("requested_model") or "")
            answer = response_object(answer, echo=echo)
        return {"ok": True, "result": output_line(status=200, body=answer, **common)}
    error = GatewayError(f"The request failed ({fields.get('error_class') or 'error'}).")
    error.code = fields.get("error_class") or None
    return {"ok": False, "result": output_line(status=fields.get("http_status") or 500, body=error.as_body(), **common)}

