"""Rate limits and budgets as a client of the API sees them (in process, real fake provider)."""

import json
import time
from decimal import Decimal

import pytest
from tests.asgi_client import ApiClient

from accounting.models import Budget, BudgetPeriod, BudgetReservation, RateLimit, UsageRecord
from accounting.ratelimits import REQUESTS, Limit, rate_limit_store

pytestmark = pytest.mark.django_db(transaction=True)


async def ask(gateway, **extra):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}
    return await ApiClient().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", headers=gateway.auth
    )


async def test_rpm_limit_answers_429_with_openai_headers(gateway):
    await RateLimit.objects.acreate(tenant=gateway.tenant, rpm=2, tpm=100_000)
    first = await ask(gateway)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2" and first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert (await ask(gateway)).status_code == 200
    third = await ask(gateway)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(third.headers["retry-after"]) >= 1 and third.headers["x-ratelimit-remaining-requests"] == "0"
    record = await UsageRecord.objects.order_by("-created_at").afirst()
    assert record.status == "error" and record.error_class == "rate_limit_exceeded"


async def test_a_refusal_beside_a_reservation_releases_it_and_wins_over_other_errors(gateway, monkeypatch):
    """The take runs beside the route and the budget reservation (routing/pipeline.py `_prepare`)
    until the process refuses a request under the limit; then takes go first again."""
    from routing import pipeline

    await RateLimit.objects.acreate(tenant=gateway.tenant, rpm=1)
    await Budget.objects.acreate(tenant=gateway.tenant, amount_usd=Decimal("5"), period="monthly", hard=True)
    reserved = []
    reserve = pipeline._budget_reserve

    async def counted(call):
        reserved.append(call.request_id)
        await reserve(call)

    monkeypatch.setattr(pipeline, "_budget_reserve", counted)
    assert (await ask(gateway)).status_code == 200
    assert len(reserved) == 1

    refused = await ask(gateway)  # the first refusal: its reservation was made beside the take

    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(reserved) == 2
    period = await BudgetPeriod.objects.aget()
    assert period.reserved_usd == 0 and not await BudgetReservation.objects.aexists()  # its record released it
    unknown_model = await ask(gateway, model="no-such-model")
    assert unknown_model.status_code == 429  # the limit answers first, as when the take went first
    assert (await ask(gateway)).status_code == 429
    assert len(reserved) == 2  # refusing now: takes go first, refused requests reserve nothing
    assert await UsageRecord.objects.filter(error_class="rate_limit_exceeded").acount() == 3


@pytest.mark.parametrize("queue_seconds, status", [(3, 200), (0, 429)])
async def test_key_limit_waits_in_the_queue_instead_of_refusing(gateway, queue_seconds, status):
    await RateLimit.objects.acreate(tenant=gateway.tenant, api_key=gateway.key, rpm=60, queue_seconds=queue_seconds)
    bucket = Limit(name=f"key:{gateway.key.pk}:rpm", kind=REQUESTS, per_minute=60)
    drained = await rate_limit_store().acquire([bucket], {bucket.name: 60})  # empty it
    assert drained.allowed
    started = time.monotonic()
    response = await ask(gateway)
    assert response.status_code == status
    if status == 200:  # one request refills in a second: it waited for it
        assert time.monotonic() - started >= 0.5


async def test_hard_budget_refuses_with_spent_limit_and_reset(gateway):
    await Budget.objects.acreate(tenant=gateway.tenant, amount_usd=Decimal("0.00001"), period="daily", hard=True)
    response = await ask(gateway, max_tokens=100)
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert error["budget"]["limit_usd"] == "0.00" and error["budget"]["resets_at"].endswith("+00:00")
    assert not await BudgetPeriod.objects.filter(reserved_usd__gt=0).aexists()


async def test_spend_is_settled_with_the_record_and_task_and_tags_are_kept(gateway):
    await Budget.objects.acreate(tenant=gateway.tenant, amount_usd=Decimal("5"), period="monthly", hard=True)
    response = await ask(gateway, max_tokens=50, metadata={"task": "summarization", "tags": "beta, eu"})
    assert response.status_code == 200
    record = await UsageRecord.objects.aget()
    period = await BudgetPeriod.objects.aget()
    assert period.spent_usd == record.cost_usd > 0 and period.reserved_usd == 0
    assert record.task == "summarization" and record.tags == ["beta", "eu"]
