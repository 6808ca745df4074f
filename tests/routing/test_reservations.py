"""What a hard budget reserves covers every upstream call a request may make (routing/pipeline.py
`_max_cost`): the repair of a structured answer, `n` choices, the semantic cache's embedding. In
process against the real fake provider, whose ledger (`/_fake/stats` usage) is what it billed."""

from __future__ import annotations

import asyncio
import json
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import httpx
import pytest
from django.db import connection
from tests.asgi_client import ApiClient

from accounting.models import Budget, BudgetPeriod, UsageRecord
from accounting.tokens import prompt_tokens, text_tokens
from caching.models import CachePolicy
from providers.models import ProviderModel
from routing.structured import repair_payload, repair_prompt_tokens

pytestmark = pytest.mark.django_db(transaction=True)

PERSON = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"], "additionalProperties": False}}}
MICRO = Decimal("0.000001")  # a budget's places


def messages(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def mini_cost(prompt: int, completion: int) -> Decimal:
    """gpt-4o-mini's price in the `gateway` fixture: $0.15 and $0.60 per million tokens."""
    return ((prompt * Decimal("0.15") + completion * Decimal("0.60")) / 10**6).quantize(Decimal("0.00000001"))


async def ask(gateway, content: str, **extra) -> object:
    body = {"model": "gpt-4o-mini", "messages": messages(content), **extra}
    return await ApiClient().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", headers=gateway.auth
    )


async def fake_stats(fake_provider_url: str) -> dict:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{fake_provider_url}/_fake/stats")).json()


async def billed_since(fake_provider_url: str, before: dict) -> tuple[int, int, int]:
    """Chat calls, prompt and completion tokens the fake billed since `before`."""
    now = await fake_stats(fake_provider_url)
    calls = now["by_path"].get("/v1/chat/completions", 0) - before["by_path"].get("/v1/chat/completions", 0)
    return (calls, now["usage"]["prompt_tokens"] - before["usage"]["prompt_tokens"],
            now["usage"]["completion_tokens"] - before["usage"]["completion_tokens"])


async def hard_budget(gateway, amount: Decimal) -> Budget:
    """The tenant's one hard budget, at `amount` (saved: the budget cache is cleared on save)."""
    budget = await Budget.objects.filter(tenant=gateway.tenant).afirst()
    if budget is None:
        return await Budget.objects.acreate(tenant=gateway.tenant, amount_usd=amount, period="monthly", hard=True)
    budget.amount_usd = amount
    await budget.asave()
    return budget


async def settled(budget: Budget) -> BudgetPeriod:
    """The period once every record is written: nothing held, spend the sum of the records."""
    period = await BudgetPeriod.objects.aget(budget=budget)
    records = [r async for r in UsageRecord.objects.all()]
    assert period.reserved_usd == 0
    assert period.spent_usd == sum((r.cost_usd for r in records), Decimal("0"))
    return period


def assert_budget_refused(response) -> None:
    assert response.status_code == 429, response.content
    assert response.json()["error"]["code"] == "budget_exceeded"


# --- structured output: the repair call ---------------------------------------------------------
async def test_a_structured_request_reserves_its_repair_and_both_calls_are_billed(gateway, fake_provider_url):
    content, cap = "[[fake bad_json]] Describe someone", 1000
    one_call = mini_cost(prompt_tokens(messages(content)), cap)
    # Room for the first call's worst case and half again, not for a repair (whose prompt holds
    # the first one's and its answer): refused before anything goes upstream.
    budget = await hard_budget(gateway, (one_call * 3 / 2).quantize(MICRO, ROUND_CEILING))
    before = await fake_stats(fake_provider_url)
    assert_budget_refused(await ask(gateway, content, max_tokens=cap, response_format=PERSON))
    assert (await billed_since(fake_provider_url, before))[0] == 0
    assert (await settled(budget)).spent_usd == 0

    budget = await hard_budget(gateway, (one_call * 3).quantize(MICRO, ROUND_CEILING))
    before = await fake_stats(fake_provider_url)
    response = await ask(gateway, content, max_tokens=cap, response_format=PERSON)
    assert response.status_code == 200 and response.headers["x-gateway-attempts"] == "2"
    assert json.loads(response.json()["choices"][0]["message"]["content"])["age"] is not None
    calls, prompt, completion = await billed_since(fake_provider_url, before)
    record = await UsageRecord.objects.aget(status="success")
    assert calls == 2 and (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
    assert record.cost_usd == mini_cost(prompt, completion)  # both calls, as the provider billed them
    assert (await settled(budget)).spent_usd == record.cost_usd <= budget.amount_usd


async def test_a_repair_that_stays_invalid_is_billed_within_what_was_reserved(gateway, fake_provider_url):
    """Both answers cut at max_tokens (invalid JSON both times): the worst case of two calls."""
    content, cap = "[[fake bad_json]] Describe someone", 6
    budget = await hard_budget(gateway, Decimal("1"))
    before = await fake_stats(fake_provider_url)
    response = await ask(gateway, content, max_tokens=cap, response_format=PERSON)
    assert response.status_code == 502 and response.json()["error"]["code"] == "structured_output_invalid"
    calls, prompt, completion = await billed_since(fake_provider_url, before)
    record = await UsageRecord.objects.aget()
    assert calls == 2 and completion == 2 * cap
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
    assert (await settled(budget)).spent_usd == record.cost_usd == mini_cost(prompt, completion)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="budget races run on PostgreSQL (row locks)")
async def test_concurrent_repairs_never_push_spend_past_a_hard_budget(gateway, fake_provider_url):
    # Every request costs two calls whose answers are cut at max_tokens: reserving one call each,
    # 30 requests would all be let in and spend about twice what they reserved.
    cap = 8
    budget = await hard_budget(gateway, Decimal("0.0005"))
    before = await fake_stats(fake_provider_url)
    responses = await asyncio.gather(*(
        ask(gateway, f"[[fake bad_json]] Describe person {i}", max_tokens=cap, response_format=PERSON)
        for i in range(30)
    ))
    period = await settled(budget)
    assert period.spent_usd <= budget.amount_usd
    _, prompt, completion = await billed_since(fake_provider_url, before)
    assert period.spent_usd == mini_cost(prompt, completion)  # what the provider billed, no more
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    assert 0 < len(refused) < 30


def test_the_repair_prompt_stays_within_what_is_reserved_for_it():
    """Whatever the problem says: a JSON Schema message quotes the value it rejects, which may be
    the whole answer, in any script."""
    original = messages("Describe someone. " * 20)
    answer = "Here you go: Ünïcødé 🙂 " * 40
    bound = repair_prompt_tokens(prompt_tokens=prompt_tokens(original), answer_tokens=text_tokens(answer))
    for problem in ("short", "🙂" * 5000, "x" * 10_000, f"at /a/b: {answer!r} is not of type 'object'"):
        repaired = repair_payload({"messages": original}, answer=answer, problem=problem)
        assert prompt_tokens(repaired["messages"]) <= bound


async def test_failed_attempts_are_not_billed_though_the_provider_generated_them(gateway, fake_provider_url):
    """The documented bound on retries (docs/accounting.md): a non-streamed answer whose connection
    drops mid-body is retried (the default group: one retry on the one deployment); the provider
    generated it each time, the record bills what answered: nothing."""
    budget = await hard_budget(gateway, Decimal("1"))
    before = await fake_stats(fake_provider_url)
    response = await ask(gateway, "Hello [[fake disconnect_after=1]]", max_tokens=5)
    assert response.status_code == 502
    calls, _, completion = await billed_since(fake_provider_url, before)
    assert calls == 2 and completion == 2 * 5
    record = await UsageRecord.objects.aget()
    assert record.error_class == "connection" and record.cost_usd == 0
    assert (await settled(budget)).spent_usd == 0


# --- n choices --------------------------------------------------------------------------------------
async def test_n_choices_reserve_every_choice_and_the_prompt_once(gateway, fake_provider_url):
    content, cap = "Name three rivers [[fake chunks=90]]", 100
    three = mini_cost(prompt_tokens(messages(content)), 3 * cap)
    budget = await hard_budget(gateway, (three - MICRO).quantize(MICRO, ROUND_FLOOR))
    assert_budget_refused(await ask(gateway, content, n=3, max_tokens=cap))
    assert (await ask(gateway, content, n=1, max_tokens=cap)).status_code == 200

    budget = await hard_budget(gateway, (await settled(budget)).spent_usd + three.quantize(MICRO, ROUND_CEILING))
    before = await fake_stats(fake_provider_url)
    response = await ask(gateway, content, n=3, max_tokens=cap)
    assert response.status_code == 200 and len(response.json()["choices"]) == 3
    _, prompt, completion = await billed_since(fake_provider_url, before)
    record = await UsageRecord.objects.filter(status="success").alatest("created_at")
    assert completion == 3 * 90 and (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
    assert (await settled(budget)).spent_usd <= budget.amount_usd


# --- the semantic cache's embedding --------------------------------------------------------------
@pytest.fixture
def dear_embeddings(gateway):
    """A semantic cache whose embeddings cost something a budget's places can see ($1 per million
    tokens instead of $0.02), and less than the chats of these tests."""
    embedding = ProviderModel.objects.get(alias="text-embedding-3-small")
    embedding.input_price_per_million = "1"
    embedding.save(update_fields=["input_price_per_million"])
    CachePolicy.objects.create(
        name="semantic", tenant=gateway.tenant, mode="semantic", ttl_seconds=3600,
        semantic_threshold="0.800", embedding_model="text-embedding-3-small",
    )
    yield


async def test_the_semantic_caches_embedding_and_the_chat_fit_one_budget(gateway, dear_embeddings):
    question, cap = "What is the capital of France?", 50
    chat = mini_cost(prompt_tokens(messages(question)), cap)
    # Room for the chat's reservation, not for the embedding that runs (and is spent) before it.
    budget = await hard_budget(gateway, chat.quantize(MICRO, ROUND_CEILING))
    assert_budget_refused(await ask(gateway, question, max_tokens=cap))
    [embedding] = [r async for r in UsageRecord.objects.filter(endpoint="embeddings")]
    assert embedding.status == "success" and embedding.cost_usd > 0
    assert (await settled(budget)).spent_usd == embedding.cost_usd <= budget.amount_usd

    budget = await hard_budget(gateway, (embedding.cost_usd * 3 + chat).quantize(MICRO, ROUND_CEILING))
    response = await ask(gateway, question, max_tokens=cap)
    assert response.status_code == 200 and response.headers["x-gateway-cache"] == "miss"
    assert (await settled(budget)).spent_usd <= budget.amount_usd


async def test_an_embedding_after_the_answer_reserves_beside_the_chats_reservation(gateway, dear_embeddings):
    """`no-cache`: no lookup, and the answer's embedding for the index is made once it is known,
    while the chat's own reservation is still held: it must fit beside it, or it is skipped."""
    question, cap = "What is the capital of Spain?", 50
    chat = mini_cost(prompt_tokens(messages(question)), cap)
    budget = await hard_budget(gateway, chat.quantize(MICRO, ROUND_CEILING))
    response = await ask(gateway, question, max_tokens=cap, cache={"no_cache": True})
    assert response.status_code == 200
    records = {r.endpoint: r async for r in UsageRecord.objects.all()}
    assert records["embeddings"].error_class == "budget_exceeded" and records["embeddings"].cost_usd == 0
    assert (await settled(budget)).spent_usd == records["chat.completions"].cost_usd <= budget.amount_usd


# --- the refusal says why ---------------------------------------------------------------------------
async def test_a_refusal_names_the_worst_case_and_the_max_tokens_that_fits(gateway):
    await hard_budget(gateway, Decimal("0.01"))
    prompt = prompt_tokens(messages("Hello"))
    refused = await ask(gateway, "Hello")
    assert_budget_refused(refused)
    assert "retry-after" not in refused.headers  # no wait makes 128k tokens fit $0.01
    error = refused.json()["error"]
    basis = error["budget"]["max_cost_basis"]
    counted = basis["prompt_tokens"]  # the gateway's estimate of the prompt, before any upstream count
    assert 0 < counted <= prompt and basis["output_tokens"] == 128000 - counted and basis["model"] == "gpt-4o-mini"
    worst = mini_cost(counted, 128000 - counted)
    assert error["type"] == "insufficient_quota" and error["message"].startswith(
        f"This request may cost up to ${worst:.6f} ({128000 - counted:,} output tokens (what the context window"
        f" leaves, as the request sets no max_tokens) x $0.60/M + {counted} prompt tokens x $0.15/M on gpt-4o-mini)"
    )
    assert "more than the $0.010000 left in the tenant's monthly budget of $0.01 ($0.000000 spent" in error["message"]
    fitting = int(error["message"].rsplit("Set max_tokens to ", 1)[1].split(" ")[0].replace(",", ""))
    assert fitting == int((Decimal("0.01") - counted * Decimal("0.15") / 10**6) / Decimal("0.60") * 10**6)
    assert error["budget"]["request_max_cost_usd"] == f"{worst:.6f}" and error["budget"]["left_usd"] == "0.010000"
    # The fix works: with that max_tokens the request fits and is answered.
    assert (await ask(gateway, "Hello", max_tokens=fitting)).status_code == 200


async def test_the_anthropic_door_refuses_in_anthropics_format(gateway):
    await hard_budget(gateway, Decimal("0.01"))
    body = {"model": "claude-haiku-4-5", "max_tokens": 8192, "messages": messages("Hello")}
    refused = await ApiClient().post("/v1/messages", json.dumps(body), content_type="application/json",
                                     headers={"x-api-key": gateway.raw_key, "anthropic-version": "2023-06-01"})
    assert refused.status_code == 429
    payload = refused.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "rate_limit_error"
    assert "8,192 output tokens (max_tokens) x $5.00" in payload["error"]["message"]
    assert "Lower max_tokens to 1,99" in payload["error"]["message"]
