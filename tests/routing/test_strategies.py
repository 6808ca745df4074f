"""Routing strategies in isolation, on hand-built deployments: no database, no provider.

Round-robin turns and latency samples live in Redis when `REDIS_URL` is set and in process
otherwise; the tests that depend on them run both ways.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from decimal import Decimal

import pytest
import redis
from django.conf import settings

from providers.adapters import Target
from providers.selectors import Deployment, Price
from routing.health import LocalHealthStore, RedisHealthStore, health_store
from routing.strategies import (
    fallback,
    in_flight,
    least_busy,
    lowest_cost,
    lowest_latency,
    round_robin,
    weighted,
)

# The Redis of the test run, kept before a test empties settings.REDIS_URL.
TEST_REDIS_URL = settings.REDIS_URL


def deployment(
    name: str, *, model_id: int, priority: int = 0, weight: int = 1,
    input_price: str = "0", output_price: str = "0", scheduled_prices: tuple[Price, ...] = (),
) -> Deployment:
    return Deployment(
        model_id=model_id,
        alias="gpt-4o-mini",
        mode="chat",
        price=Price(input_per_million=Decimal(input_price), output_per_million=Decimal(output_price)),
        scheduled_prices=scheduled_prices,
        context_window=None,
        max_output_tokens=None,
        created=0,
        target=Target(
            provider_id=model_id, provider_name=name, wire_type="openai",
            api_base=f"http://{name}.invalid/v1", upstream_model="gpt-4o-mini",
        ),
        key=f"{model_id}:{model_id}",
        priority=priority,
        weight=weight,
    )


def names(deployments: list[Deployment]) -> list[str]:
    return [d.target.provider_name for d in deployments]


@pytest.fixture(params=["redis", "in_process"])
def store_mode(request, settings):
    """Run with the shared state in Redis (REDIS_URL set) and in process (REDIS_URL empty)."""
    if request.param == "in_process":
        settings.REDIS_URL = ""
    elif not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    yield request.param
    if request.param == "redis":
        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(f"{settings.GATEWAY_REDIS_PREFIX}:*"))
        if keys:
            client.delete(*keys)  # round-robin counters carry no TTL
        client.close()


def redis_counter(group: str) -> int | None:
    """The group's round-robin counter in the Redis of the test run (None: never written)."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        value = client.get(f"{settings.GATEWAY_REDIS_PREFIX}:rr:{group}")
    finally:
        client.close()
    return None if value is None else int(value)


# --- fallback ----------------------------------------------------------------------------------
async def test_fallback_orders_by_priority_whatever_the_input_order():
    a = deployment("a", model_id=3, priority=-5)
    b = deployment("b", model_id=1, priority=0)
    c = deployment("c", model_id=2, priority=7)
    assert names(await fallback([c, a, b])) == ["a", "b", "c"]
    assert names(await fallback([b, c, a])) == ["a", "b", "c"]


async def test_fallback_breaks_priority_ties_by_model_id():
    late = deployment("late", model_id=9, priority=1)
    early = deployment("early", model_id=4, priority=1)
    assert names(await fallback([late, early])) == ["early", "late"]


# --- round robin -------------------------------------------------------------------------------
ROTATION = ["a", "b", "c"]


def rotation_group() -> list[Deployment]:
    # Handed over out of priority order: the rotation follows priority, not the list.
    return [
        deployment("c", model_id=3, priority=2),
        deployment("a", model_id=1, priority=0),
        deployment("b", model_id=2, priority=1),
    ]


async def test_round_robin_is_exact_and_in_rotation_order(store_mode):
    group = rotation_group()
    firsts = []
    for _ in range(30):
        order = names(await round_robin(group, group="rr-exact"))
        start = ROTATION.index(order[0])
        assert order == ROTATION[start:] + ROTATION[:start]  # failover order keeps the rotation
        firsts.append(order[0])
    assert firsts == ROTATION * 10
    assert Counter(firsts) == {"a": 10, "b": 10, "c": 10}
    if store_mode == "redis":
        assert redis_counter("rr-exact") == 30  # the turns came from Redis, not its fallback
    elif TEST_REDIS_URL:
        assert redis_counter("rr-exact") is None  # in process: Redis untouched


async def test_round_robin_stays_exact_under_concurrency(store_mode):
    group = rotation_group()
    orders = await asyncio.gather(*(round_robin(group, group="rr-concurrent") for _ in range(30)))
    assert Counter(order[0].target.provider_name for order in orders) == {"a": 10, "b": 10, "c": 10}


async def test_round_robin_keeps_one_turn_sequence_per_group(store_mode):
    group = rotation_group()
    assert names(await round_robin(group, group="rr-x"))[0] == "a"
    assert names(await round_robin(group, group="rr-x"))[0] == "b"
    assert names(await round_robin(group, group="rr-y"))[0] == "a"
    assert names(await round_robin(group, group="rr-x"))[0] == "c"


# --- weighted ----------------------------------------------------------------------------------
async def test_weighted_first_pick_follows_the_weights():
    heavy = deployment("heavy", model_id=1, weight=3)
    light = deployment("light", model_id=2, weight=1)
    draws = 4000
    firsts = Counter([names(await weighted([light, heavy]))[0] for _ in range(draws)])
    # The first pick is heavy with p = 3/4: a binomial count with mean n*p = 3000 and standard
    # deviation sqrt(n*p*(1-p)) = sqrt(750) ~ 27.4. Five sigma (~137) makes a false failure about
    # a one-in-a-million event, while an unweighted (1:1) pick, mean 2000, is far outside.
    p = 3 / 4
    mean, sigma = draws * p, math.sqrt(draws * p * (1 - p))
    assert abs(firsts["heavy"] - mean) <= 5 * sigma, firsts
    assert firsts["heavy"] + firsts["light"] == draws


async def test_weight_zero_is_never_first_while_others_have_weight():
    off = deployment("off", model_id=1, priority=0, weight=0)
    one = deployment("one", model_id=2, priority=1, weight=1)
    two = deployment("two", model_id=3, priority=2, weight=2)
    orders = [names(await weighted([off, one, two])) for _ in range(2000)]
    assert all(order[-1] == "off" for order in orders)
    assert {order[0] for order in orders} == {"one", "two"}  # both weighted ones do get picked


# --- lowest cost -------------------------------------------------------------------------------
def priced_group() -> list[Deployment]:
    return [
        deployment("cheap-in", model_id=1, priority=0, input_price="1", output_price="10"),
        deployment("cheap-out", model_id=2, priority=1, input_price="5", output_price="1"),
        deployment("even", model_id=3, priority=2, input_price="2", output_price="2"),
    ]


async def test_lowest_cost_ranks_by_prompt_and_completion_prices():
    group = priced_group()
    # Long prompt, short answer: 1000*in + 10*out -> cheap-in 1100, even 2020, cheap-out 5010.
    ordered = await lowest_cost(group, prompt_tokens=1000, completion_tokens=10)
    assert names(ordered) == ["cheap-in", "even", "cheap-out"]
    # Short prompt, long answer: 10*in + 1000*out -> cheap-out 1050, even 2020, cheap-in 10010.
    ordered = await lowest_cost(group, prompt_tokens=10, completion_tokens=1000)
    assert names(ordered) == ["cheap-out", "even", "cheap-in"]


async def test_lowest_cost_breaks_ties_by_priority():
    second = deployment("second", model_id=1, priority=5, input_price="1", output_price="1")
    first = deployment("first", model_id=2, priority=0, input_price="1", output_price="1")
    pricey = deployment("pricey", model_id=3, priority=-1, input_price="3", output_price="3")
    ordered = await lowest_cost([second, pricey, first], prompt_tokens=100, completion_tokens=100)
    assert names(ordered) == ["first", "second", "pricey"]


async def test_lowest_cost_uses_the_price_in_force_now():
    # "was-cheap" has a base price of 1/1 but a rise to 9/9 already in force; "stays" costs 5/5
    # and has a cut to 0/0 that only starts in 2100.
    was_cheap = deployment(
        "was-cheap", model_id=1, priority=0, input_price="1", output_price="1",
        scheduled_prices=(Price(Decimal("9"), Decimal("9"), effective_from=946_684_800.0),),
    )
    stays = deployment(
        "stays", model_id=2, priority=1, input_price="5", output_price="5",
        scheduled_prices=(Price(Decimal("0"), Decimal("0"), effective_from=4_102_444_800.0),),
    )
    ordered = await lowest_cost([was_cheap, stays], prompt_tokens=100, completion_tokens=100)
    assert names(ordered) == ["stays", "was-cheap"]


# --- lowest latency ----------------------------------------------------------------------------
async def test_lowest_latency_puts_the_faster_deployment_first(store_mode):
    slow = deployment("slow", model_id=1, priority=0)
    fast = deployment("fast", model_id=2, priority=1)
    store = health_store()
    assert isinstance(store, RedisHealthStore if store_mode == "redis" else LocalHealthStore)
    for _ in range(3):
        await store.record(slow.key, ok=True, latency_ms=400)
    await store.record(fast.key, ok=True, latency_ms=120)
    assert names(await lowest_latency([slow, fast])) == ["fast", "slow"]
    if store_mode == "redis":
        assert store.fallback.local_calls == 0


async def test_lowest_latency_tries_an_unmeasured_deployment_first(store_mode):
    measured_fast = deployment("measured-fast", model_id=1, priority=0)
    measured_slow = deployment("measured-slow", model_id=2, priority=1)
    new = deployment("new", model_id=3, priority=9)
    await health_store().record(measured_fast.key, ok=True, latency_ms=50)
    await health_store().record(measured_slow.key, ok=True, latency_ms=900)
    ordered = await lowest_latency([measured_slow, measured_fast, new])
    assert names(ordered) == ["new", "measured-fast", "measured-slow"]


async def test_lowest_latency_without_history_is_priority_order(store_mode):
    group = [deployment("b", model_id=2, priority=1), deployment("a", model_id=1, priority=0)]
    assert names(await lowest_latency(group)) == ["a", "b"]


# --- least busy --------------------------------------------------------------------------------
@pytest.fixture
def busy():
    """The process's in-flight counters, restored afterwards."""
    saved = in_flight.copy()
    yield in_flight
    in_flight.clear()
    in_flight.update(saved)


async def test_least_busy_follows_in_flight_counts(busy):
    a = deployment("a", model_id=1, priority=0)
    b = deployment("b", model_id=2, priority=1)
    c = deployment("c", model_id=3, priority=2)
    busy[a.key], busy[b.key], busy[c.key] = 3, 0, 1
    assert names(await least_busy([a, b, c])) == ["b", "c", "a"]
    busy[b.key] += 5
    assert names(await least_busy([a, b, c])) == ["c", "a", "b"]


async def test_least_busy_breaks_ties_by_priority(busy):
    a = deployment("a", model_id=1, priority=0)
    b = deployment("b", model_id=2, priority=1)
    assert names(await least_busy([b, a])) == ["a", "b"]
    busy[a.key] = 1
    assert names(await least_busy([b, a])) == ["b", "a"]


# --- in_flight as the request path keeps it ------------------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_an_open_stream_counts_as_in_flight_until_it_ends(gateway, busy):
    """Through the production ASGI app, speaking ASGI to it: the client holds the stream open at
    its first part (httpx's ASGI transport would only hand it over once complete)."""
    from gateway_site.asgi import application
    from providers.models import ProviderKey, ProviderModel

    model = await ProviderModel.objects.aget(provider__name="fake", alias="gpt-4o-mini")
    key = f"{model.pk}:{(await ProviderKey.objects.aget(provider__name='fake')).pk}"
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
    request = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    sent: list[dict] = []
    first_part, reading, done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def receive():
        if request:
            return request.pop()
        await done.wait()  # what a server says once the response is complete
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()
        elif message["type"] == "http.response.body" and not first_part.is_set():
            first_part.set()
            await reading.wait()  # the client reads no further for now: the stream stays open

    headers = [(b"host", b"testserver"), (b"content-type", b"application/json"),
               *((name.lower().encode(), value.encode()) for name, value in gateway.auth.items())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000), "server": ("testserver", 80)}
    served = asyncio.create_task(application(scope, receive, send))
    await first_part.wait()
    in_flight_while_open = busy[key]
    reading.set()
    await served
    assert sent[0]["status"] == 200 and (b"x-gateway-provider", b"fake") in sent[0]["headers"]
    raw = b"".join(message.get("body", b"") for message in sent[1:])
    assert raw.rstrip().endswith(b"data: [DONE]")
    assert (in_flight_while_open, busy[key]) == (1, 0)
