"""`RedisConnections.script`: Lua script calls of one event loop share pipelines, each call keeps
its own answer or error, and a Redis that lost its scripts gets them again."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from django.conf import settings

from kernel import redis_client
from kernel.redis_client import REDIS_DOWN, RedisConnections

# Adds ARGV[1] to the counter KEYS[1]; ARGV[1] == 'bad' is an error of that call alone.
COUNT = """
if ARGV[1] == 'bad' then return redis.error_reply('bad amount') end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


@pytest.fixture
def key():
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    name = f"test-{uuid.uuid4().hex}:count"
    yield name
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(name)
    client.close()


@pytest.fixture
async def connections():
    made = RedisConnections(settings.REDIS_URL, timeout=5.0)
    yield made
    await made.aclose()


def connections_received() -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return client.info("stats")["total_connections_received"]
    finally:
        client.close()


async def test_concurrent_calls_share_pipelines_and_each_gets_its_own_answer(connections, key):
    before = connections_received()
    answers = await asyncio.gather(*(connections.script(COUNT, keys=[key], args=[1]) for _ in range(100)))
    # Each call saw the counter after its own increment, in the order the calls were made.
    assert answers == list(range(1, 101))
    # One pipeline on the wire at a time: a connection or two, where 100 separate EVALSHAs would
    # have opened the pool's 32 (the counter is the server's, hence the slack).
    assert connections_received() - before <= 4


async def test_a_scripts_error_is_its_own_callers_only(connections, key):
    calls = [connections.script(COUNT, keys=[key], args=[amount]) for amount in (1, "bad", 2)]
    first, bad, last = await asyncio.gather(*calls, return_exceptions=True)
    assert (first, last) == (1, 3)
    assert isinstance(bad, redis.exceptions.ResponseError) and "bad amount" in str(bad)


async def test_scripts_lost_by_redis_are_loaded_again(connections, key):
    assert await connections.script(COUNT, keys=[key], args=[5]) == 5
    admin = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        await admin.script_flush()  # as after a Redis restart
    finally:
        await admin.aclose()
    answers = await asyncio.gather(*(connections.script(COUNT, keys=[key], args=[1]) for _ in range(3)))
    assert sorted(answers) == [6, 7, 8]


async def test_a_caller_that_goes_away_leaves_the_others_their_answers(connections, key):
    first = asyncio.ensure_future(connections.script(COUNT, keys=[key], args=[1]))
    await asyncio.sleep(0)  # its pipeline is on the wire; the next calls wait for the next one
    gone = asyncio.ensure_future(connections.script(COUNT, keys=[key], args=[10]))
    kept = asyncio.ensure_future(connections.script(COUNT, keys=[key], args=[100]))
    await asyncio.sleep(0)
    gone.cancel()
    assert await first == 1
    assert await kept in (101, 111)  # the cancelled call may or may not have run in Redis
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_dead_redis_fails_every_call_of_the_pipeline():
    dead = RedisConnections("redis://127.0.0.1:1/0", timeout=0.5)
    try:
        results = await asyncio.gather(
            *(dead.script(COUNT, keys=["k"], args=[1]) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(result, REDIS_DOWN) for result in results)
        # and the next call tries again rather than hanging on the failed pipeline
        with pytest.raises(REDIS_DOWN):
            await dead.script(COUNT, keys=["k"], args=[1])
    finally:
        await dead.aclose()


async def test_a_deferred_call_waits_for_the_next_call_and_keeps_its_place(connections, key, monkeypatch):
    monkeypatch.setattr(redis_client, "SCRIPT_DEFER_SECONDS", 60.0)
    deferred = asyncio.ensure_future(connections.script(COUNT, keys=[key], args=[1], deferred=True))
    await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert counter(key) is None  # not sent: nobody waits for it
    # The next call takes it along, behind which it was made.
    assert await connections.script(COUNT, keys=[key], args=[10]) == 11
    assert await deferred == 1


async def test_a_deferred_call_alone_goes_out_at_its_deadline(connections, key, monkeypatch):
    monkeypatch.setattr(redis_client, "SCRIPT_DEFER_SECONDS", 0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(connections.script(COUNT, keys=[key], args=[3], deferred=True), timeout=10) == 3
    assert loop.time() - started >= 0.2
    assert counter(key) == 3


def counter(key: str) -> int | None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        value = client.get(key)
        return None if value is None else int(value)
    finally:
        client.close()
