"""The cache's steps in the request pipeline: decide, look up, fill (single flight), replay.

`routing.pipeline` calls, for a chat request whose route is known:
- `cache_lookup(auth=, rule=, variant=, deployments=, payload=, stream=, body=, headers=, embed=)`
  before the budget reservation: decides from the policy and the request's own options and returns
  a `CacheDecision` (None: the cache stays out of it) whose `entry` is the answer on a hit (exact,
  then semantic; `embed` embeds the request's text for the semantic lookup, through the pipeline,
  so the embedding call is routed, limited and recorded like any other);
- `cache_fill(call, decision, produce)` around the upstream call of a plain request: identical
  requests in flight in this process share one upstream call (a request that shares one becomes a
  hit of its `decision`), and the answer is stored before the flight ends;
- `cache_stream_tee(call, decision, chunks)` around a live stream, storing the answer once it ended well;
- `cache_replay(decision, response_id)` for a hit on a stream: the cached answer as upstream-style
  chunks, which the pipeline relays like a live stream (same framing, usage chunk, record).

The decision is this module's value, which the pipeline keeps (`routing.call.Call.cache`); these
functions only read the pipeline's call (its auth, payload, usage and deployment), never write it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from accounting.auth import ApiKeyContext
from accounting.pricing import cost_compute
from caching import keys
from caching.models import CacheMode
from caching.selectors import Policy, cache_policy_for
from caching.semantic import semantic_index
from caching.store import cache_store
from kernel import metrics
from kernel.errors import GatewayError
from providers.adapters import Usage

logger = logging.getLogger(__name__)

HEADER = "x-gateway-cache"
_WORDS = re.compile(r"\s*\S+\s*")
_ZERO = Decimal("0")


# `embed(auth=, model=, text=)`: the text's embedding by the gateway model `model`.
Embed = Callable[..., Awaitable[list[float]]]


@dataclass
class CachePlan:
    """What the cache does for one request."""

    key: str
    policy: Policy
    options: keys.CacheOptions
    read: bool
    ttl: int
    shares_flight: bool  # read, and not a stream: identical requests in flight share one answer
    scope: str = ""
    embed: Embed | None = None
    vector: list[float] | None = None

    @property
    def semantic_on(self) -> bool:
        return self.policy.mode == CacheMode.SEMANTIC and bool(self.policy.embedding_model)


@dataclass(slots=True)
class CacheDecision:
    """What the cache decided for one request, kept by the pipeline: the plan, the state ("miss",
    "hit" or "semantic"), and on a hit the entry that answers, what it saved and its usage."""

    plan: CachePlan
    state: str = "miss"
    entry: dict | None = None
    saved_cost_usd: Decimal = _ZERO
    usage: Usage | None = None

    @property
    def header(self) -> tuple[str, str]:
        """The response header that tells the client whether the cache answered."""
        return HEADER, "miss" if self.entry is None else "hit"

    def hit(self, entry: dict, *, semantic: bool) -> None:
        """The request is answered by `entry`."""
        self.entry = entry
        self.state = "semantic" if semantic else "hit"
        self.saved_cost_usd = Decimal(entry["cost_usd"])
        self.usage = Usage.from_openai(entry["body"].get("usage"))


def cache_plan_make(
    *, tenant_id: int, rule: str, variant: str, deployments, payload: dict, stream: bool,
    options: keys.CacheOptions, policy: Policy,
) -> CachePlan | None:
    if policy.mode == CacheMode.OFF or options.no_store:
        return None
    if policy.mode == CacheMode.DETERMINISTIC and not (options.asked or keys.deterministic(payload)):
        return None
    if not rule:
        # No rule: the route is the deployments the name resolved to for this key, whose
        # allow-list may have left some out ("fake:premium" names the aliases "premium" and
        # "house"): a key allowed only "house" must not be answered what "premium" wrote.
        rule = "aliases:" + ",".join(sorted({deployment.alias for deployment in deployments}))
    return CachePlan(
        key=keys.cache_key(tenant_id=tenant_id, rule=rule, variant=variant, payload=payload),
        scope=keys.semantic_scope(tenant_id=tenant_id, rule=rule, variant=variant, payload=payload),
        policy=policy,
        options=options,
        read=not options.no_cache,
        ttl=options.ttl or policy.ttl_seconds,
        shares_flight=not options.no_cache and not stream,
    )


async def cache_lookup(
    *, auth: ApiKeyContext, rule: str, variant: str, deployments, payload: dict, stream: bool,
    body: dict, headers, embed: Embed,
) -> CacheDecision | None:
    """The cache's decision for a routed chat request (`rule`, `variant` and `deployments` of its
    route): None when the cache stays out of it; else a miss, or a hit with its `entry`."""
    options = keys.cache_options_parse(body=body, headers=headers)  # a bad one is a 400 whatever the policy
    policy = await cache_policy_for(tenant_id=auth.tenant_id, rule=rule)
    plan = cache_plan_make(
        tenant_id=auth.tenant_id, rule=rule, variant=variant, deployments=deployments,
        payload=payload, stream=stream, options=options, policy=policy,
    )
    if plan is None:
        return None
    plan.embed = embed
    decision = CacheDecision(plan)
    if not plan.read:
        return decision
    store, tenant_id = cache_store(), auth.tenant_id
    entry = _fresh(await store.get(tenant_id, plan.key), plan)
    metrics.cache_lookup(auth.tenant_slug, "exact", entry is not None)
    semantic = False
    if entry is None and plan.semantic_on:
        entry = await _semantic_lookup(auth, payload, plan)
        semantic = entry is not None
        metrics.cache_lookup(auth.tenant_slug, "semantic", semantic)
    if entry is None:
        if not plan.shares_flight:  # a request sharing a flight counts in `cache_fill`
            await store.count(tenant_id, hit=False)
        return decision
    decision.hit(entry, semantic=semantic)
    await store.count(tenant_id, hit=True, semantic=semantic, saved=decision.saved_cost_usd)
    return decision


def _fresh(entry: dict | None, plan: CachePlan) -> dict | None:
    max_age = plan.options.max_age
    if entry is not None and max_age is not None and time.time() - entry["created"] > max_age:
        return None
    return entry


async def _semantic_lookup(auth: ApiKeyContext, payload: dict, plan: CachePlan) -> dict | None:
    try:
        plan.vector = await plan.embed(
            auth=auth, model=plan.policy.embedding_model, text=keys.request_text(payload)
        )
    except GatewayError as exc:  # no embedding, no semantic cache: the request goes on
        logger.warning("semantic cache: embedding with %s failed: %s", plan.policy.embedding_model, exc.message)
        return None
    index, tenant_id = semantic_index(), auth.tenant_id
    found = index.search(
        tenant_id=tenant_id, scope=plan.scope, vector=plan.vector, threshold=plan.policy.semantic_threshold
    )
    if found is None:
        return None
    entry = _fresh(await cache_store().get(tenant_id, found[0]), plan)
    if entry is None:
        index.discard(tenant_id=tenant_id, scope=plan.scope, key=found[0])
        return None
    return entry


def cache_body(decision: CacheDecision, response_id: str) -> dict:
    """The cached answer as this request's own response (its own id)."""
    body = copy.deepcopy(decision.entry["body"])
    body["id"] = response_id
    return body


# --- filling: single flight and storing -----------------------------------------------------------
_flights: dict[tuple[int, str], asyncio.Future] = {}


async def cache_fill(call, decision: CacheDecision | None, produce: Callable[[], Awaitable[dict]]) -> dict:
    """The answer of a plain request: `produce()`'s, or that of the identical request in flight.

    The first of identical requests (same tenant, same key) calls upstream and stores the answer;
    those arriving while it runs wait for it and are answered as hits (`decision.entry`). Its
    failure is theirs too. If it is cancelled (its client left), the waiting requests start over.
    `call` is read once `produce()` has answered: its usage and deployment price the stored entry.
    """
    if decision is None or not decision.plan.shares_flight:
        body = await produce()
        await _store(call, decision, body, usage=call.usage)
        return body
    tenant_id = call.auth.tenant_id
    flight_key = (tenant_id, decision.plan.key)
    leader = _flights.get(flight_key)
    if leader is not None:
        shared = await asyncio.shield(leader)
        if shared is None:
            return await cache_fill(call, decision, produce)
        body, entry = shared
        decision.hit(entry, semantic=False)  # its lookup was counted a miss in the metrics: it was one
        await cache_store().count(tenant_id, hit=True, saved=decision.saved_cost_usd)
        return copy.deepcopy(body)
    future = _flights[flight_key] = asyncio.get_running_loop().create_future()
    await cache_store().count(tenant_id, hit=False)
    try:
        body = await produce()
        entry = await _store(call, decision, body, usage=call.usage)
        future.set_result((copy.deepcopy(body), entry))
        return body
    except GatewayError as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: nobody waiting is not an error
        raise
    finally:
        if not future.done():
            future.set_result(None)
        _flights.pop(flight_key, None)


def _entry(call, body: dict, pieces: list[str] | None, usage: Usage | None) -> dict:
    stored = {name: value for name, value in body.items() if name != "id"}
    if usage is not None and not stored.get("usage"):
        stored["usage"] = usage.as_openai()
    entry = {"body": stored, "cost_usd": str(_cost(call, usage)), "created": time.time()}
    if pieces is not None:
        entry["pieces"] = pieces  # a streamed answer replays in its own pieces
    return entry


def _cost(call, usage: Usage | None) -> Decimal:
    if call.deployment is None or usage is None:
        return Decimal("0")
    return cost_compute(
        price=call.deployment.price_at(time.time()),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
    )


async def _store(
    call, decision: CacheDecision | None, body: dict, *, usage: Usage | None, pieces: list[str] | None = None
) -> dict:
    entry = _entry(call, body, pieces, usage)
    if decision is None or decision.state != "miss" or not _storable(body):
        return entry
    plan, tenant_id = decision.plan, call.auth.tenant_id
    await cache_store().put(tenant_id, plan.key, entry, ttl=plan.ttl)
    if plan.semantic_on:
        await _semantic_add(call, plan)
    return entry


def _storable(body: dict) -> bool:
    return all((choice or {}).get("finish_reason") in ("stop", "length", "tool_calls") for choice in body.get("choices") or [None])


async def _semantic_add(call, plan: CachePlan) -> None:
    if plan.vector is None:
        try:
            plan.vector = await plan.embed(
                auth=call.auth, model=plan.policy.embedding_model, text=keys.request_text(call.payload)
            )
        except GatewayError:
            return
    semantic_index().add(
        tenant_id=call.auth.tenant_id, scope=plan.scope, key=plan.key, vector=plan.vector, ttl=plan.ttl
    )


# --- streams --------------------------------------------------------------------------------------
def cache_stream_tee(call, decision: CacheDecision | None, chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """Pass a live stream through; once it has ended well, store its answer (text answers only).
    Without a cache decision the stream itself is returned: no layer per chunk. `call` is read
    once the stream has been relayed and recorded: its usage (or recorded tokens) and deployment."""
    if decision is None:
        return chunks
    return _stream_tee(call, decision, chunks)


async def _stream_tee(call, decision: CacheDecision, chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
    pieces: list[str] = []
    finish, model, storable = None, "", True
    try:
        async for chunk in chunks:
            if "error" in chunk:
                storable = False
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                storable = storable and choice.get("index", 0) == 0 and not delta.get("tool_calls")
                if isinstance(delta.get("content"), str):
                    pieces.append(delta["content"])
                finish = choice.get("finish_reason") or finish
            model = model or chunk.get("model", "")
            yield chunk
    finally:
        await chunks.aclose()
    if storable and finish is not None:
        usage = call.usage
        if usage is None and call.recorded_tokens != (0, 0):  # the provider sent none: the record's
            usage = Usage(prompt_tokens=call.recorded_tokens[0], completion_tokens=call.recorded_tokens[1])
        body = _stream_body(pieces, finish=finish, model=model)
        await _store(call, decision, body, usage=usage, pieces=pieces)


def _stream_body(pieces: list[str], *, finish: str, model: str) -> dict:
    return {
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "".join(pieces)},
            "logprobs": None,
            "finish_reason": finish,
        }],
    }


def cache_replay(decision: CacheDecision, response_id: str) -> tuple[dict, AsyncIterator[dict]]:
    """A hit for a stream: the first chunk and the rest, as a provider would have sent them."""
    chunks = _replay_chunks(decision.entry, response_id)
    return chunks[0], _iterate(chunks[1:])


async def _iterate(chunks: list[dict]) -> AsyncIterator[dict]:
    for chunk in chunks:
        yield chunk


def _replay_chunks(entry: dict, response_id: str) -> list[dict]:
    body = entry["body"]
    base = {"id": response_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model", "")}
    chunks = []
    for choice in body.get("choices") or ():
        index, message = choice.get("index", 0), choice.get("message") or {}
        chunks.append({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]})
        content = message.get("content") or ""
        pieces = entry["pieces"] if "pieces" in entry else _WORDS.findall(content)
        for piece in pieces:
            chunks.append({**base, "choices": [{"index": index, "delta": {"content": piece},
                                                "logprobs": None, "finish_reason": None}]})
        if message.get("tool_calls"):
            calls = [{"index": i, **tool_call} for i, tool_call in enumerate(message["tool_calls"])]
            chunks.append({**base, "choices": [{"index": index, "delta": {"tool_calls": calls},
                                                "logprobs": None, "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                            "finish_reason": choice.get("finish_reason") or "stop"}]})
    if body.get("usage"):
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


def cache_completion_text(decision: CacheDecision) -> str:
    body = decision.entry["body"]
    return "".join(((c or {}).get("message") or {}).get("content") or "" for c in body.get("choices") or ())


# --- operator reads and writes ----------------------------------------------------------------------
async def cache_stats(*, tenant_id: int) -> dict:
    """The tenant's counters and entries; `semantic_entries` counts this process's index only."""
    stats = (await cache_store().stats(tenant_id)).as_dict()
    return {**stats, "semantic_entries": semantic_index().count(tenant_id)}


async def cache_clear(*, tenant_id: int) -> dict:
    """Drop every cached answer of the tenant (exact and semantic); other tenants keep theirs."""
    entries = await cache_store().clear(tenant_id)
    return {"entries": entries, "semantic_entries": semantic_index().clear(tenant_id)}
