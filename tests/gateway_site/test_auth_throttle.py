"""Failed authentications throttled per client address, at every door that takes a key: the tenant
API over HTTP (OpenAI's and Anthropic's error shapes), the WebSocket, the operator API's staff
tokens; counted in /metrics; shared by the processes of one Redis. In process through the real
ASGI application, on the test PostgreSQL and Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import AsyncClient

from gateway_site.asgi import application
from kernel.auth_throttle import RedisAuthFailureStore
from tests.conftest import ROOT, role_join

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 3
ATTACKER, NEIGHBOUR = "198.51.100.7", "203.0.113.9"
WRONG = {"Authorization": "Bearer sk-gw-wrong-guess-000000000000"}


@pytest.fixture
def limit(settings):
    settings.GATEWAY_AUTH_FAILURES_PER_MINUTE = LIMIT


def _from(address: str) -> httpx.AsyncClient:
    """A client of the real ASGI application calling from `address` (the ASGI scope's client)."""
    transport = httpx.ASGITransport(app=application, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://localhost",
                             headers={"content-type": "application/json"})


def _chat(model: str = "gpt-4o-mini") -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


async def _metric(name: str, door: str) -> float:
    text = (await AsyncClient().get("/metrics")).content.decode()
    found = re.search(rf'^{name}{{door="{door}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_an_address_past_the_limit_gets_429_even_with_the_right_key(gateway, limit):
    attacker = _from(ATTACKER)
    failures_before = await _metric("gateway_auth_failures_total", "api")
    for _ in range(LIMIT):
        refused = await attacker.post("/v1/chat/completions", content=_chat(), headers=WRONG)
        assert refused.status_code == 401
    throttled = await attacker.post("/v1/chat/completions", content=_chat(), headers=WRONG)
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    error = throttled.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "too_many_auth_failures")
    # Refused before the key is looked up, the right key included: guessing cannot go on.
    right = await attacker.post("/v1/chat/completions", content=_chat(), headers=gateway.auth)
    assert right.status_code == 429
    assert (await attacker.get("/v1/models", headers=gateway.auth)).status_code == 429
    # Another address is not concerned.
    neighbour = await _from(NEIGHBOUR).post("/v1/chat/completions", content=_chat(),
                                            headers=gateway.auth)
    assert neighbour.status_code == 200
    assert await _metric("gateway_auth_failures_total", "api") == failures_before + LIMIT + 1
    assert await _metric("gateway_auth_throttled_total", "api") >= 3


async def test_the_anthropic_door_answers_in_its_own_shape(gateway, limit):
    attacker = _from(ATTACKER)
    body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    answers = [await attacker.post("/v1/messages", content=body,
                                   headers={"x-api-key": "sk-ant-wrong-guess-00000000"}) for _ in range(LIMIT + 1)]
    assert [a.status_code for a in answers] == [401] * LIMIT + [429]
    assert answers[-1].json()["type"] == "error"
    assert answers[-1].json()["error"]["type"] == "rate_limit_error"
    assert answers[-1].headers["retry-after"]


async def test_an_ipv6_client_counts_by_its_64(gateway, limit):
    """A client picks addresses from its /64 at will: they share one count."""
    for n in range(LIMIT):
        assert (await _from(f"2001:db8:5:6::{n + 1}").get("/v1/models", headers=WRONG)).status_code == 401
    assert (await _from("2001:db8:5:6:ffff::9").get("/v1/models", headers=WRONG)).status_code == 429
    assert (await _from("2001:db8:5:6::77").get("/v1/models", headers=gateway.auth)).status_code == 429
    assert (await _from("2001:db8:5:7::1").get("/v1/models", headers=gateway.auth)).status_code == 200


async def test_a_missing_key_is_not_a_guess(gateway, limit):
    attacker = _from(ATTACKER)
    for _ in range(LIMIT + 2):
        assert (await attacker.post("/v1/chat/completions", content=_chat())).status_code == 401
    assert (await attacker.post("/v1/chat/completions", content=_chat(),
                                headers=gateway.auth)).status_code == 200


async def test_zero_turns_it_off(gateway, settings):
    settings.GATEWAY_AUTH_FAILURES_PER_MINUTE = 0
    attacker = _from(ATTACKER)
    for _ in range(25):
        assert (await attacker.get("/v1/models", headers=WRONG)).status_code == 401
    assert (await attacker.get("/v1/models", headers=gateway.auth)).status_code == 200


async def _socket_auth(key: str) -> tuple[dict, int]:
    socket = WebsocketCommunicator(application, "/v1/ws/chat")
    socket.scope["client"] = (ATTACKER, 40000)
    await socket.connect()
    await socket.send_json_to({"type": "auth", "api_key": key})
    event = await socket.receive_json_from(timeout=10)
    closed = await socket.receive_output(timeout=10)
    await socket.disconnect()
    return event, closed["code"]


async def test_the_websocket_auth_is_throttled(gateway, limit):
    answers = [await _socket_auth("sk-gw-wrong-guess-000000000000") for _ in range(LIMIT + 1)]
    assert [(event["status"], code) for event, code in answers] == [(401, 4401)] * LIMIT + [(429, 4429)]
    event, code = await _socket_auth(gateway.raw_key)
    assert (event["status"], code) == (429, 4429)
    assert event["error"]["code"] == "too_many_auth_failures"


async def test_staff_tokens_are_throttled(operator_token, limit):
    attacker = _from(ATTACKER)
    wrong = {"Authorization": "Bearer sk-op-wrong-guess-0000000000"}
    for _ in range(LIMIT):
        assert (await attacker.get("/v1/providers", headers=wrong)).status_code == 401
    throttled = await attacker.get("/v1/providers", headers=wrong)
    assert throttled.status_code == 429 and throttled.headers["retry-after"]
    assert throttled.json()["error"]["code"] == "too_many_auth_failures"
    right = {"Authorization": f"Bearer {operator_token}"}
    assert (await attacker.get("/v1/providers", headers=right)).status_code == 429
    assert (await _from(NEIGHBOUR).get("/v1/providers", headers=right)).status_code == 200
    assert await _metric("gateway_auth_throttled_total", "operator") >= 2


@pytest.fixture
def operator_token(db):
    from django.contrib.auth.models import User

    from operators.services import staff_token_create

    user = User.objects.create_user("ops", password="x", is_staff=True)
    role_join(user, "Gateway operators")
    return staff_token_create(user=user, name="ci")[1]


async def test_a_staff_token_on_the_cache_api_is_not_a_failed_tenant_key(gateway, operator_token, limit):
    attacker = _from(ATTACKER)
    for _ in range(LIMIT + 2):
        answer = await attacker.get("/v1/cache/stats", headers={"Authorization": f"Bearer {operator_token}"})
        assert answer.status_code == 200


async def test_processes_sharing_redis_share_the_count(settings, limit):
    """Two stores on one Redis are two worker processes: each pays one Redis call per failure and
    learns of the limit from its own next failure."""
    first, second = (RedisAuthFailureStore(url=django_settings.REDIS_URL, prefix=settings.GATEWAY_REDIS_PREFIX)
                     for _ in range(2))
    assert [(await first.count(ATTACKER))[0] for _ in range(LIMIT)] == [1, 2, 3]
    failures, left = await second.count(ATTACKER)
    assert failures == LIMIT + 1 and 0 < left <= 60
    assert (await first.count(NEIGHBOUR))[0] == 1
    raw = first._redis.sync_client()
    assert raw.get(f"{settings.GATEWAY_REDIS_PREFIX}:authfail:{ATTACKER}") == str(LIMIT + 1)
    assert 0 < raw.pttl(f"{settings.GATEWAY_REDIS_PREFIX}:authfail:{ATTACKER}") <= 60_000


async def test_a_successful_authentication_writes_nothing_to_redis(gateway, settings, limit):
    import redis

    assert (await _from(ATTACKER).get("/v1/models", headers=gateway.auth)).status_code == 200
    keys = await sync_to_async(redis.Redis.from_url(django_settings.REDIS_URL).keys)(
        f"{settings.GATEWAY_REDIS_PREFIX}:authfail:*")
    assert keys == []


@pytest.mark.parametrize("value", ["-1", "twenty"])
def test_a_wrong_setting_stops_the_start(value):
    import os

    env = {**os.environ, "GATEWAY_AUTH_FAILURES_PER_MINUTE": value}
    started = subprocess.run([sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE']="
                              "'gateway_site.settings'; django.setup()"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    assert "ImproperlyConfigured: GATEWAY_AUTH_FAILURES_PER_MINUTE" in started.stderr
