"""The request pipeline: one gateway request in, provider attempts, one UsageRecord out.

auth -> validate -> limits -> route -> budget -> attempt -> respond -> record. The HTTP views
(and later the Anthropic-compatible view and the WebSocket consumer) call `chat` and
`embeddings`; each step is one call into the module or app that owns it. Nothing here holds a
database connection or transaction while a provider is awaited.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

from django.db import InterfaceError, OperationalError

from accounting.auth import ApiKeyContext
from accounting.budgets import CostBasis, budget_reserve, budgets_for
from accounting.pricing import cost_compute, units_cost
from accounting.quotas import (
    RateLimited,
    rate_limit_refusing,
    rate_limit_take,
    rate_limit_take_now,
    rate_limits_for,
)
from caching.semantic import SEMANTIC_TASK
from caching.services import cache_body, cache_completion_text, cache_fill, cache_lookup, cache_replay, cache_stream_tee
from accounting import tokens
from kernel.errors import DatabaseUnavailable, GatewayError, InvalidRequest, ProviderError
from providers.adapters import MediaResult, Usage
from providers.adapters.text_completions import TEXT_COMPLETION, native_param
from providers.http import adapter_for
from guardrails.checks import InputGuard, guard_input, guard_output
from routing import validation
from routing.attempts import attempts_run
from routing.call import Call
from routing.media import MediaKind
from routing.record import record, record_cancelled, record_failure
from routing.relay import choice_texts, first_chunk_sender, stream_relay
from routing.selection import RoutePlan, route_hints, route_select
from routing.structured import (
    StructuredOutputInvalid,
    output_problem,
    repair_payload,
    repair_prompt_tokens,
    required_schema,
)

logger = logging.getLogger(__name__)

# Output tokens assumed for a budget reservation when neither the request nor the model caps them.
DEFAULT_OUTPUT_RESERVE = 4096

# What a door hands the pipeline to authenticate the request: `accounting.auth.request_authenticate`
# bound to an HTTP request.
Credential = Callable[[], Awaitable[ApiKeyContext]]

__all__ = ["Call", "chat", "cost_ceiling", "embeddings", "media", "prompt_tokens_count"]


async def chat(
    call: Call, *, credential: Credential, parse: Callable[[], dict | Awaitable[dict]], headers
) -> dict | AsyncIterator[dict]:
    """Serve a chat completion: the finished body, or an iterator of chunks for a stream.

    The door hands over its `credential` (checked here, first: `accounting.auth`; a refusal leaves
    `call.auth` None) and `parse`, which reads the body in the door's wire format into the
    OpenAI-shaped request (or a coroutine giving it, for a door whose translation reads the database
    as the authenticated tenant, `call.auth`: the Responses API's `previous_response_id`; a legacy
    text completion's door also sets `call.text_completion`, which its adapters pass through to a
    completion model or translate to chat, `providers.adapters.text_completions`); a body
    that fails to parse after authentication is recorded like any failure. A stream is returned only once its first chunk has arrived, so that a provider failing
    before the first token fails over (or becomes a plain HTTP error) without the client seeing a
    byte. Every failure is a `GatewayError` for the door to render in its wire format, the database
    being unreachable included (`DatabaseUnavailable`, 503).
    """
    try:
        call.auth = await credential()
        return await _chat(call, body=await _parsed(call, parse), headers=headers)
    except (OperationalError, InterfaceError) as exc:
        raise _outage(call) from exc


def _outage(call: Call) -> DatabaseUnavailable:
    """The answer to a request that found the database unreachable (logged with the exception
    being handled). Nothing was recorded (`_failure_record`) and nothing reserved stays held."""
    logger.warning("request %s: the database is unavailable", call.request_id, exc_info=True)
    return DatabaseUnavailable()


async def _parsed(call: Call, parse: Callable[[], dict | Awaitable[dict]]) -> dict:
    try:
        body = parse()
        return await body if inspect.isawaitable(body) else body
    except GatewayError as exc:
        await record_failure(call, exc)
        raise


async def _chat(call: Call, *, body: dict, headers) -> dict | AsyncIterator[dict]:
    try:
        call.stream = body.get("stream") is True
        call.payload = validation.chat_request_validate(body)
        if call.text_completion is not None:
            call.payload[TEXT_COMPLETION] = call.text_completion
        call.schema = required_schema(call.payload)
        _guarded(call, await guard_input(
            tenant_id=call.auth.tenant_id, payload=call.payload, events=call.guard_events,
            count_tokens=call.prompt_tokens_counter(),
        ))
        await _prepare(call, body=body, headers=headers, mode="chat" if call.text_completion is None else "completion")
        if call.cache is not None and call.cache.entry is not None:
            return await _cached(call)
        if call.stream:
            stream, first = await _attempt(call, first_chunk_sender(call))
            return cache_stream_tee(call, call.cache, stream_relay(call, stream, first))
        answer = await cache_fill(call, call.cache, lambda: _answer(call))
        if call.cache is not None and call.cache.entry is not None:
            call.usage = call.cache.usage  # answered by an identical request's flight
    except BaseException as exc:
        await _failure_record(call, exc)
        raise
    answer["id"] = call.response_id
    call.answer = answer
    await record(call, status="success", completion_text="".join(choice_texts(answer)))
    return answer


async def _failure_record(call: Call, exc: BaseException) -> None:
    """The record of a request that ended in `exc`: its error; a cancellation (the client left, or
    a worker's shutdown cut it); a bug of the gateway (the client gets a 500), which still gets its
    one record, so that what it reserved on a budget is released. None while the database
    is unreachable (the view answers 503, `kernel.http.allow_methods`)."""
    if isinstance(exc, GatewayError):
        await record_failure(call, exc)
    elif isinstance(exc, asyncio.CancelledError):
        await record_cancelled(call)
    elif isinstance(exc, Exception) and not isinstance(exc, (OperationalError, InterfaceError)):
        try:
            await record_failure(call, GatewayError("The gateway failed to handle this request."))
        except Exception:  # noqa: BLE001 - the original error is the one to raise
            logger.exception("request %s: its failure could not be recorded", call.request_id)


async def _answer(call: Call) -> dict:
    result = await _attempt(call, lambda adapter, d: adapter.chat(call.payload, d.target))
    call.usage = result.usage
    if call.schema is not None:
        result = await _structured(call, result)
    guard_output(rules=call.guard, body=result.body, events=call.guard_events)
    return result.body


async def _cached(call: Call) -> dict | AsyncIterator[dict]:
    """A cache hit: the stored answer, replayed as a stream or as this request's own body."""
    if call.stream:
        first, rest = cache_replay(call.cache, call.response_id)
        return stream_relay(call, rest, first)
    body = cache_body(call.cache, call.response_id)
    # The rules in force now, which may be newer than the stored answer.
    guard_output(rules=call.guard, body=body, events=call.guard_events)
    call.answer = body
    await record(call, status="success", completion_text=cache_completion_text(call.cache))
    return body


async def _structured(call: Call, result):
    """Check a structured answer; ask once for a repair; both calls' tokens are billed."""
    message = (result.body.get("choices") or [{}])[0].get("message") or {}
    if message.get("tool_calls"):
        return result
    problem = output_problem(message.get("content"), call.schema)
    if problem is None:
        return result
    repair = repair_payload(call.payload, answer=message.get("content") or "", problem=problem)
    repaired = await _attempt(call, lambda adapter, d: adapter.chat(repair, d.target))
    call.usage = _usage_sum(call.usage, repaired.usage)
    content = ((repaired.body.get("choices") or [{}])[0].get("message") or {}).get("content")
    problem = output_problem(content, call.schema)
    if problem is not None:
        raise StructuredOutputInvalid(
            f"The model's answer does not match the requested JSON format after one repair: {problem}."
        )
    return repaired


def _usage_sum(first, second):
    if first is None or second is None:
        return first or second
    return type(first)(
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        completion_tokens=first.completion_tokens + second.completion_tokens,
        cached_tokens=first.cached_tokens + second.cached_tokens,
    )


async def prompt_tokens_count(*, auth: ApiKeyContext, payload: dict) -> tuple[int, str]:
    """The prompt tokens of a valid chat request, and who counted them: `provider`, the routed
    deployment's own free counter (Anthropic's `count_tokens`, Gemini's `countTokens`), or
    `estimate`, the gateway's tokenizer, when it has none or its counter failed. Nothing is billed
    or recorded."""
    plan = await route_select(auth=auth, model=payload["model"], mode="chat")
    deployment = plan.deployments[0]
    try:
        counted = await adapter_for(deployment.target.wire_type).count_tokens(payload, deployment.target)
    except ProviderError as exc:
        logger.info("token count of %s fell back to the estimate: %s", deployment.target.provider_name, exc)
        counted = None
    if counted is not None:
        return counted, "provider"
    count = tokens.prompt_tokens(payload["messages"])
    if payload.get("tools"):
        count += tokens.text_tokens(json.dumps(payload["tools"]))
    return count, "estimate"


async def cost_ceiling(*, auth: ApiKeyContext, mode: str, bodies: list[dict]) -> Decimal:
    """The most these requests could cost, each as a budget would reserve it (`_max_cost`), on the
    deployments its model routes to (mode `chat`: OpenAI-shaped chat bodies, or `embedding`); a
    body that does not validate or route counts nothing, as it fails before any provider. A
    batch's estimate at its creation: nothing is reserved, billed or recorded."""
    validate = validation.chat_request_validate if mode == "chat" else validation.embeddings_request_validate
    plans: dict[str, RoutePlan | None] = {}
    total = Decimal("0")
    for body in bodies:
        call = Call(endpoint="embeddings" if mode == "embedding" else "chat.completions", auth=auth,
                    request_id=uuid.uuid4())
        try:
            call.payload = validate(body)
        except GatewayError:
            continue
        model = call.payload["model"]
        if model not in plans:
            try:
                plans[model] = await route_select(auth=auth, model=model, mode=mode)
            except GatewayError:
                plans[model] = None
        if plans[model] is None:
            continue
        call.plan, call.schema = plans[model], required_schema(call.payload) if mode == "chat" else None
        total += _max_cost(call)[0]
    return total


async def embeddings(call: Call, *, credential: Credential, parse: Callable[[], dict], headers) -> dict:
    """Serve an embeddings request; `credential`, `parse` and failures as for `chat`."""
    try:
        call.auth = await credential()
        return await _embeddings(call, body=await _parsed(call, parse), headers=headers)
    except (OperationalError, InterfaceError) as exc:
        raise _outage(call) from exc


async def text_embed(*, auth, model: str, text: str) -> list[float]:
    """`text` embedded by the gateway model `model`, through the embeddings pipeline (routing,
    limits, budgets and the UsageRecord of the embedding call are the usual ones); the semantic
    cache's `embed`."""
    call = Call(endpoint="embeddings", auth=auth)
    body = {"model": model, "input": text, "metadata": {"task": SEMANTIC_TASK}}
    body = await _embeddings(call, body=body, headers={})
    return body["data"][0]["embedding"]


async def _embeddings(call: Call, *, body: dict, headers) -> dict:
    try:
        call.payload = validation.embeddings_request_validate(body)
        _guarded(call, await guard_input(
            tenant_id=call.auth.tenant_id, payload=call.payload, events=call.guard_events,
            count_tokens=call.prompt_tokens_counter(),
        ))
        await _prepare(call, body=body, headers=headers, mode="embedding")
        result = await _attempt(call, lambda adapter, d: adapter.embeddings(call.payload, d.target))
    except BaseException as exc:
        await _failure_record(call, exc)
        raise
    call.usage = result.usage
    call.answer = result.body
    await record(call, status="success")
    return result.body


async def media(call: Call, *, kind: MediaKind, credential: Credential, parse, headers) -> MediaResult:
    """Serve a media request (`routing.media`: images, audio, moderations, rerank) through the same
    steps as embeddings; `credential`, `parse` and failures as for `chat`. A binary answer
    (speech) comes back as the provider sends it, in `chunks`, and is recorded when it ends."""
    call.media = kind
    try:
        call.auth = await credential()
        return await _media(call, body=await _parsed(call, parse), headers=headers)
    except (OperationalError, InterfaceError) as exc:
        raise _outage(call) from exc


async def _media(call: Call, *, body: dict, headers) -> MediaResult:
    kind = call.media
    try:
        call.payload = kind.validate(body)
        texts = kind.texts(call.payload)
        if texts:
            guard = await guard_input(
                tenant_id=call.auth.tenant_id, payload={"input": texts}, events=call.guard_events,
                count_tokens=lambda payload: tokens.embedding_input_tokens(payload["input"]),
            )
            call.guard, call.payload = guard.rules, kind.with_texts(call.payload, guard.payload["input"])
        call.prompt_estimate = tokens.embedding_input_tokens(kind.texts(call.payload)) if texts else 0
        await _prepare(call, body=body, headers=headers, mode=kind.mode)
        result = await _attempt(call, lambda adapter, d: kind.send(adapter, call.payload, d.target))
    except BaseException as exc:
        await _failure_record(call, exc)
        raise
    call.usage = result.usage or Usage(prompt_tokens=0, completion_tokens=0)  # what the provider billed
    call.units = result.units
    if result.chunks is not None:
        result.chunks = _binary_relay(call, result.chunks)
        return result
    await record(call, status="success")
    return result


async def _binary_relay(call: Call, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A binary answer's bytes as the provider sends them, none kept; recorded once it ends: a
    success, a provider's failure mid-answer, or the client gone (the provider billed it all)."""
    ended = False
    try:
        async for piece in chunks:
            if call.ttft_ms is None:
                call.ttft_ms = call.elapsed_ms()
            yield piece
        ended = True
    except GatewayError as exc:
        await record_failure(call, exc)
        raise
    finally:
        await chunks.aclose()
        if ended:
            await record(call, status="success")
        elif not call.recorded:
            await record_cancelled(call)


def _media_fit(call: Call) -> None:
    """Only the deployments whose model can serve the request (an image model's most images and
    its sizes, a speech model's voices and formats); the 400 naming the parameter when none is left."""
    why = None
    able = []
    for deployment in call.plan.deployments:
        problem = call.media.unfit(call.payload, deployment.target.upstream_model)
        if problem is None:
            able.append(deployment)
        else:
            why = why or problem
    if not able:
        raise why
    call.plan.deployments = able


def _guarded(call: Call, guard: InputGuard) -> None:
    """The input guardrails' result: the rules and the checked payload become the call's (their
    events went to the call's list as they were found, a blocked request's too)."""
    call.guard, call.payload = guard.rules, guard.payload
    if guard.prompt_tokens is not None:
        call.prompt_estimate = guard.prompt_tokens


async def _prepare(call: Call, *, body: dict, headers, mode: str) -> None:
    """Everything between a valid body and the first attempt: limits, route, budget."""
    call.requested_model = body["model"]
    hints = route_hints(body=body, headers=headers)
    call.task, call.tags = hints.task, tuple(sorted(hints.tags))
    call.conversation_id = hints.conversation
    rules = await rate_limits_for(tenant_id=call.auth.tenant_id, key_id=call.auth.key_id)
    if rules and _rate_limit_now(call, rules):
        rules = ()  # taken in process (the store's own buckets, or this process's leases of Redis's)
    if not rules or rate_limit_refusing(rules):
        await _rate_limit(call, rules)
        await _route_and_reserve(call, body=body, headers=headers, hints=hints, mode=mode)
        return
    # The take is on its way to Redis while the route is chosen and the budget reserved: a lone
    # request waits for one round trip instead of two. A refusal is still the answer, before any
    # other error; the record of a refused request releases what was reserved. Once this process
    # refuses requests under these limits, their takes go first again (`rate_limit_refusing`).
    taking = asyncio.ensure_future(_rate_limit(call, rules))
    try:
        await _route_and_reserve(call, body=body, headers=headers, hints=hints, mode=mode)
    except BaseException:
        refusal = await _refusal(taking)
        if refusal is not None:
            raise refusal from None
        raise
    await taking


async def _route_and_reserve(call: Call, *, body: dict, headers, hints, mode: str) -> None:
    call.plan = await _route(call, hints=hints, mode=mode)
    _content_check(call)
    if call.text_completion is not None:
        _text_completion_check(call)
    if call.media is not None:
        _media_fit(call)
    if call.media is None and mode != "embedding":
        plan = call.plan
        call.cache = await cache_lookup(
            auth=call.auth, rule=plan.rule, variant=plan.variant, deployments=plan.deployments,
            payload=call.payload, stream=call.stream, body=body, headers=headers, embed=text_embed,
        )
        if call.cache is not None and call.cache.entry is not None:
            call.usage = call.cache.usage
            return  # answered from the cache: nothing to reserve
    await _budget_reserve(call)


async def _refusal(taking: asyncio.Future) -> RateLimited | None:
    """The rate limit's refusal of a take that ran beside a step that failed, if it refused."""
    try:
        await taking
    except RateLimited as exc:
        return exc
    except Exception:  # noqa: BLE001 - the step's own error is the answer
        return None
    return None


def _content_check(call: Call) -> None:
    """Images go only to deployments that take them: a model whose capabilities are listed
    without "vision" is left out, and a 400 names `messages` when none is left."""
    if not any(
        isinstance(part, dict) and part.get("type") == "image_url"
        for message in call.payload.get("messages") or ()
        for part in (message.get("content") if isinstance(message.get("content"), list) else ())
    ):
        return
    able = [d for d in call.plan.deployments if not d.capabilities or "vision" in d.capabilities]
    if not able:
        raise InvalidRequest(
            f"The model '{call.requested_model}' does not accept images.",
            param="messages", code="unsupported_content",
        )
    call.plan.deployments = able


def _text_completion_check(call: Call) -> None:
    """A text completion that asks for what only a completion model honours (`suffix`, `logprobs`,
    `best_of` past `n`, several prompts) goes only to completion models (passed through); a 400
    names the parameter when the route has none (its chat models would translate it to chat)."""
    param = native_param(call.payload)
    if param is None:
        return
    able = [d for d in call.plan.deployments if d.target.mode == "completion"]
    if not able:
        raise InvalidRequest(
            f"'{param}' needs a completion model; the model '{call.requested_model}' is served by chat "
            "models, which /v1/completions translates to chat.",
            param=param, code="unsupported_value",
        )
    call.plan.deployments = able


def _rate_limit_now(call: Call, rules) -> bool:
    taken = rate_limit_take_now(rules=rules, tokens=_rate_limit_tokens(call))
    if taken is None:
        return False
    headers, call.charge = taken
    call.extra_headers.update(headers)
    return True


def _rate_limit_tokens(call: Call) -> int:
    return call.estimated_prompt_tokens() + (_output_cap(call, None) or 0)


async def _rate_limit(call: Call, rules) -> None:
    if rules:
        headers, call.charge = await rate_limit_take(rules=rules, tokens=_rate_limit_tokens(call))
        call.extra_headers.update(headers)


async def _route(call: Call, *, hints, mode: str) -> RoutePlan:
    def estimate() -> tuple[int, int]:
        return call.estimated_prompt_tokens(), _output_cap(call, None) or 256

    return await route_select(
        auth=call.auth, model=call.requested_model, mode=mode, hints=hints, estimate=estimate
    )


async def _budget_reserve(call: Call) -> None:
    call.budgets = await budgets_for(tenant_id=call.auth.tenant_id, key_id=call.auth.key_id)
    if any(budget.hard for budget in call.budgets):
        estimate, basis = _max_cost(call)
        call.reservation = await budget_reserve(
            budgets=call.budgets, request_id=str(call.request_id), estimate=estimate, basis=basis
        )


def _output_cap(call: Call, deployment, *, prompt: int | None = None) -> int | None:
    """The most tokens one choice of an answer may have (`prompt`: of a call whose prompt is not
    the request's own, for what is left of the context window)."""
    if call.endpoint == "embeddings" or call.media is not None:
        return 0
    requested = call.payload.get("max_completion_tokens") or call.payload.get("max_tokens")
    if requested or deployment is None:
        return requested
    if deployment.max_output_tokens:
        return deployment.max_output_tokens
    if deployment.context_window:
        return max(deployment.context_window - (call.estimated_prompt_tokens() if prompt is None else prompt), 0)
    return DEFAULT_OUTPUT_RESERVE


def _max_cost(call: Call) -> tuple[Decimal, CostBasis | None]:
    """The most this request could cost on the deployments it may reach: what a budget reserves,
    and how that was computed (for a refusal to say).

    Every upstream call the request may make counts, each at the dearest deployment that may serve
    it (the repair may fail over from the deployment of the first answer): the answer, whose `n`
    choices are billed up to the output cap each and the prompt once; and, for a structured answer
    that is not streamed, the repair call (`_structured`), whose prompt is the request's, the first
    answer (choice 0, up to its output cap) and the instruction (`repair_prompt_tokens`). Retries
    and fallbacks do not add: only the attempt that answers is billed (docs/accounting.md)."""
    now = time.time()
    deployments = call.plan.deployments
    if call.media is not None:
        return _media_max_cost(call, now), None
    choices = call.choices_billed()
    prompt = call.estimated_prompt_tokens()
    calls = [prompt]  # each call's prompt tokens
    if call.schema is not None and not call.stream:
        answer = max(_output_cap(call, d) or 0 for d in deployments)
        calls.append(repair_prompt_tokens(prompt_tokens=prompt, answer_tokens=answer))
    total, basis = Decimal("0"), None
    for call_prompt in calls:
        cost, dearest = max(
            ((cost_compute(price=d.price_at(now), prompt_tokens=call_prompt,
                           completion_tokens=(_output_cap(call, d, prompt=call_prompt) or 0) * choices), i)
             for i, d in enumerate(deployments)),
        )
        total += cost
        if basis is None:
            basis = _cost_basis(call, deployments[dearest], prompt=call_prompt, choices=choices, now=now, calls=len(calls))
    return total, basis


def _cost_basis(call: Call, deployment, *, prompt: int, choices: int, now: float, calls: int) -> CostBasis:
    price = deployment.price_at(now)
    if call.payload.get("max_completion_tokens") or call.payload.get("max_tokens"):
        source = "max_tokens"
    elif call.endpoint == "embeddings":
        source = "none"
    elif deployment.max_output_tokens:
        source = "the model's output limit, as the request sets no max_tokens"
    elif deployment.context_window:
        source = "what the context window leaves, as the request sets no max_tokens"
    else:
        source = "the default output reserve, as the request sets no max_tokens"
    return CostBasis(
        model=deployment.alias, prompt_tokens=prompt, output_tokens=_output_cap(call, deployment, prompt=prompt) or 0,
        choices=choices, input_price=price.input_per_million, output_price=price.output_per_million,
        cap_source=source, calls=calls,
    )


def _media_max_cost(call: Call, now: float) -> Decimal:
    """A media request's worst case at its dearest deployment: the units it may bill (`n`
    images, the upload's seconds, the characters to speak, the searches) and its prompt tokens."""
    worst = call.media.worst(call.payload)
    prompt = call.estimated_prompt_tokens()
    return max(
        units_cost(price=d.price_at(now), units=worst)
        + cost_compute(price=d.price_at(now), prompt_tokens=prompt, completion_tokens=0)
        for d in call.plan.deployments
    )


async def _attempt(call: Call, send):
    return await attempts_run(
        call.plan, send, log=call.log, on_deployment=call.served_by, stream=call.stream
    )
