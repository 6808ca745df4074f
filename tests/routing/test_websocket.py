"""The WebSocket chat protocol through the real ASGI application (Channels' WebsocketCommunicator)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from accounting.models import UsageRecord
from gateway_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10


def connect(gateway=None, *, path="/v1/ws/chat", key: str | None = None) -> WebsocketCommunicator:
    headers = []
    if key or gateway is not None:
        headers.append((b"authorization", f"Bearer {key or gateway.raw_key}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def receive(socket: WebsocketCommunicator) -> dict:
    return await socket.receive_json_from(timeout=TIMEOUT)


async def until(socket: WebsocketCommunicator, kind: str, request_id: str | None = None) -> tuple[dict, list[dict]]:
    """Events up to the first of `kind` (for `request_id`); returns it and everything before it."""
    seen = []
    while True:
        event = await receive(socket)
        if event["type"] == kind and (request_id is None or event.get("id") == request_id):
            return event, seen
        seen.append(event)


def request(request_id: str, content: str = "Hello", **extra) -> dict:
    return {"type": "chat.request", "id": request_id, "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": content}], **extra}


async def test_header_auth_then_a_streamed_reply_with_usage_and_cost(gateway):
    socket = connect(gateway)
    assert (await socket.connect())[0]
    assert (await receive(socket)) == {"type": "auth.ok", "tenant": "acme"}
    await socket.send_json_to(request("r1"))
    done, before = await until(socket, "chat.done", "r1")
    deltas = [event for event in before if event["type"] == "chat.delta"]
    assert deltas and all(event["id"] == "r1" for event in deltas)
    text = "".join(event["content"] for event in deltas)
    record = await UsageRecord.objects.aget(response_id=done["response_id"])
    assert record.status == "success" and record.stream
    assert done["usage"]["completion_tokens"] == record.completion_tokens > 0
    assert done["cost_usd"] == str(record.cost_usd) and done["latency_ms"] >= 0
    assert done["provider"] == "fake" and text
    await socket.disconnect()


async def test_auth_message_for_clients_that_cannot_send_headers(gateway):
    socket = connect()
    await socket.connect()
    await socket.send_json_to({"type": "auth", "api_key": gateway.raw_key})
    assert (await receive(socket))["type"] == "auth.ok"
    await socket.send_json_to(request("r1"))
    done, _ = await until(socket, "chat.done")
    assert done["id"] == "r1"
    await socket.disconnect()


@pytest.mark.parametrize("first", [{"type": "auth", "api_key": "sk-gw-wrong"}, request("r1")])
async def test_bad_or_missing_auth_is_an_error_and_closes(gateway, first):
    socket = connect()
    await socket.connect()
    await socket.send_json_to(first)
    event = await receive(socket)
    assert event["type"] == "error" and event["status"] == 401
    assert (await socket.receive_output(timeout=TIMEOUT))["type"] == "websocket.close"
    assert await UsageRecord.objects.acount() == 0


async def test_a_wrong_key_in_the_header_closes_the_socket(gateway):
    socket = connect(key="sk-gw-nope")
    await socket.connect()
    assert (await receive(socket))["error"]["code"] == "invalid_api_key"
    assert (await socket.receive_output(timeout=TIMEOUT)) == {"type": "websocket.close", "code": 4401}


async def test_keys_in_the_query_string_are_refused(gateway):
    socket = connect(path=f"/v1/ws/chat?api_key={gateway.raw_key}")
    await socket.connect()
    event = await receive(socket)
    assert event["type"] == "error" and "URL" in event["error"]["message"]
    assert (await socket.receive_output(timeout=TIMEOUT))["type"] == "websocket.close"


async def test_two_interleaved_requests_are_told_apart(gateway):
    socket = connect(gateway)
    await socket.connect()
    await receive(socket)
    await socket.send_json_to(request("slow", "[[fake chunks=30 chunk_delay_ms=20]] one"))
    await socket.send_json_to(request("fast", "[[fake chunks=5]] two"))
    events, done = [], set()
    while done != {"slow", "fast"}:
        event = await receive(socket)
        events.append(event)
        if event["type"] == "chat.done":
            done.add(event["id"])
    order = [event["id"] for event in events if event["type"] == "chat.done"]
    assert order == ["fast", "slow"]  # the short reply finished while the long one streamed
    first_done = next(i for i, e in enumerate(events) if e["type"] == "chat.done")
    assert any(e["id"] == "slow" and e["type"] == "chat.delta" for e in events[:first_done])
    records = [r async for r in UsageRecord.objects.all()]
    assert len(records) == 2 and {r.status for r in records} == {"success"}
    await socket.disconnect()


async def test_cancel_stops_the_reply_and_records_what_was_streamed(gateway):
    socket = connect(gateway)
    await socket.connect()
    await receive(socket)
    await socket.send_json_to(request("long", "[[fake chunks=400 chunk_delay_ms=20]] go"))
    await until(socket, "chat.delta", "long")
    await socket.send_json_to({"type": "chat.cancel", "id": "long"})
    cancelled, _ = await until(socket, "chat.cancelled", "long")
    assert cancelled["id"] == "long"
    record = await UsageRecord.objects.aget()
    assert record.status == "cancelled"
    assert 0 < record.completion_tokens < 400 and record.cost_usd > 0
    await socket.send_json_to({"type": "ping"})
    assert (await until(socket, "pong"))[0]["type"] == "pong"  # the socket is still usable
    await socket.disconnect()


async def test_closing_the_socket_cancels_and_records_requests_in_flight(gateway):
    socket = connect(gateway)
    await socket.connect()
    await receive(socket)
    await socket.send_json_to(request("long", "[[fake chunks=400 chunk_delay_ms=20]] go"))
    await until(socket, "chat.delta", "long")
    await socket.disconnect()
    for _ in range(100):  # the record is written as the cancelled task unwinds
        if await UsageRecord.objects.filter(status="cancelled").aexists():
            break
        await asyncio.sleep(0.05)
    assert (await UsageRecord.objects.aget()).status == "cancelled"


@pytest.mark.parametrize(
    "message, status, code",
    [
        (request("x") | {"model": "nope"}, 404, "model_not_found"),
        (request("x", "[[fake status=500]]"), 502, "upstream_server"),
        (request("x") | {"temperature": 7}, 400, "invalid_value"),
        ({"type": "chat.request", "model": "gpt-4o-mini", "messages": []}, 400, "invalid_value"),
        ({"type": "teleport", "id": "x"}, 400, "invalid_value"),
        ({"type": "chat.cancel", "id": "never"}, 400, "invalid_value"),
    ],
)
async def test_errors_use_the_http_error_classes(gateway, message, status, code):
    socket = connect(gateway)
    await socket.connect()
    await receive(socket)
    await socket.send_json_to(message)
    event, _ = await until(socket, "error")
    assert event["status"] == status and event["error"]["code"] == code
    await socket.disconnect()


async def test_a_stream_cut_mid_way_ends_with_an_error_event(gateway):
    socket = connect(gateway)
    await socket.connect()
    await receive(socket)
    await socket.send_json_to(request("cut", "[[fake disconnect_after=3 chunks=10]]"))
    event, before = await until(socket, "error", "cut")
    assert event["error"]["code"] == "connection" and any(e["type"] == "chat.delta" for e in before)
    assert event["response_id"]
    record = await UsageRecord.objects.aget(response_id=event["response_id"])
    assert record.status == "error" and record.completion_tokens > 0


async def test_invalid_json_and_oversized_frames_get_errors(gateway, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    socket = connect(gateway)
    await socket.connect()
    await receive(socket)
    await socket.send_to(text_data="{not json")
    assert (await receive(socket))["error"]["code"] == "invalid_json"
    await socket.send_to(text_data="x" * 2000)
    assert (await receive(socket))["type"] == "error"
    await socket.disconnect()


async def test_the_channel_layer_is_redis_when_redis_is_configured(settings):
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    assert type(layer).__module__.startswith("channels_redis")
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "probe", "n": 1})
    assert (await layer.receive(channel))["n"] == 1


# --- a credential that dies while the socket is open (docs/websocket.md, "Authentication") -------
# The cache's interval is long here: what ends the socket is the change, cleared at once in the
# process that made it, not the interval running out.
LONG_CACHE_SECONDS = 3600


async def working(socket: WebsocketCommunicator, *, auth_message: str | None = None) -> None:
    """Open the socket and have one request answered on it."""
    assert (await socket.connect())[0]
    if auth_message is not None:
        await socket.send_json_to({"type": "auth", "api_key": auth_message})
    assert (await receive(socket))["type"] == "auth.ok"
    await socket.send_json_to(request("before"))
    await until(socket, "chat.done", "before")


async def assert_refused_and_closed(socket: WebsocketCommunicator, code: str) -> None:
    """The next request gets an error with `code`, the socket is closed with 4401, and the request
    never reached the pipeline: the only UsageRecord is the one of the request before."""
    await socket.send_json_to(request("after"))
    event = await receive(socket)
    assert event["type"] == "error" and event["id"] == "after", event
    assert event["status"] == 401 and event["error"]["code"] == code
    assert (await socket.receive_output(timeout=TIMEOUT)) == {"type": "websocket.close", "code": 4401}
    assert [record.status async for record in UsageRecord.objects.all()] == ["success"]


@pytest.mark.parametrize("by_message", [False, True], ids=["header", "auth-message"])
async def test_a_key_revoked_while_the_socket_is_open_ends_it(gateway, settings, by_message):
    from accounting.services import api_key_revoke

    settings.GATEWAY_CONFIG_CACHE_SECONDS = LONG_CACHE_SECONDS
    socket = connect() if by_message else connect(gateway)
    await working(socket, auth_message=gateway.raw_key if by_message else None)
    await sync_to_async(api_key_revoke)(key=gateway.key)
    await assert_refused_and_closed(socket, "invalid_api_key")


async def test_a_key_that_expired_while_the_socket_is_open_ends_it(gateway, settings):
    from accounting.services import api_key_create

    settings.GATEWAY_CONFIG_CACHE_SECONDS = LONG_CACHE_SECONDS
    key, raw = await sync_to_async(api_key_create)(
        tenant=gateway.tenant, name="short", expires_at=timezone.now() + timedelta(days=1)
    )
    socket = connect(key=raw)
    await working(socket)
    key.expires_at = timezone.now() - timedelta(seconds=1)
    await key.asave(update_fields=["expires_at"])
    await assert_refused_and_closed(socket, "expired_api_key")


async def test_a_tenant_deactivated_while_the_socket_is_open_ends_it(gateway, settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = LONG_CACHE_SECONDS
    socket = connect(gateway)
    await working(socket)
    gateway.tenant.is_active = False
    await gateway.tenant.asave(update_fields=["is_active"])
    await assert_refused_and_closed(socket, "invalid_api_key")


async def test_requests_on_a_working_key_keep_being_answered(gateway, settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = LONG_CACHE_SECONDS
    socket = connect(gateway)
    await working(socket)
    await socket.send_json_to(request("again"))
    done, _ = await until(socket, "chat.done", "again")
    assert done["id"] == "again" and await UsageRecord.objects.acount() == 2
    await socket.disconnect()


# --- a member's session (the playground) ---------------------------------------------------------
@pytest.fixture
def member(gateway, django_user_model):
    """A member of the gateway's tenant, logged in with a real session: (client, user)."""
    from django.test import Client

    from accounting.models import TenantMembership

    user = django_user_model.objects.create_user(username="mia", password="pw-mia-12345")
    TenantMembership.objects.create(user=user, tenant=gateway.tenant)
    client = Client()
    assert client.login(username="mia", password="pw-mia-12345")
    return client, user


def member_socket(client) -> WebsocketCommunicator:
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    return WebsocketCommunicator(application, "/v1/ws/chat", headers=[
        (b"origin", b"http://testserver"), (b"host", b"testserver"), (b"cookie", cookie),
    ])


async def test_a_member_who_logs_out_ends_the_playground_socket(member, settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = LONG_CACHE_SECONDS
    client, _ = member
    socket = member_socket(client)
    await working(socket)
    response = await sync_to_async(client.post)("/accounts/logout/")
    assert response.status_code in (200, 302)
    await assert_refused_and_closed(socket, "session_expired")


async def test_a_member_removed_from_the_tenant_ends_the_playground_socket(member, settings):
    from accounting.models import TenantMembership

    settings.GATEWAY_CONFIG_CACHE_SECONDS = LONG_CACHE_SECONDS
    client, user = member
    socket = member_socket(client)
    await working(socket)
    await (await TenantMembership.objects.aget(user=user)).adelete()
    await assert_refused_and_closed(socket, "session_expired")


async def test_a_member_deactivated_ends_the_playground_socket(member, settings):
    settings.GATEWAY_CONFIG_CACHE_SECONDS = LONG_CACHE_SECONDS
    client, user = member
    socket = member_socket(client)
    await working(socket)
    user.is_active = False
    await user.asave(update_fields=["is_active"])
    await assert_refused_and_closed(socket, "session_expired")


def test_a_members_session_is_checked_once_per_cache_interval(member, settings, django_assert_num_queries):
    """The check before each request costs no query while the cached answer is fresh."""
    from accounting.members import member_session_context

    settings.GATEWAY_CONFIG_CACHE_SECONDS = LONG_CACHE_SECONDS
    client, user = member
    session_key = client.cookies["sessionid"].value
    first = async_to_sync(member_session_context)(session_key=session_key, user_id=user.pk)
    with django_assert_num_queries(0):
        again = async_to_sync(member_session_context)(session_key=session_key, user_id=user.pk)
    assert first is again and first.tenant_slug == "acme" and first.key_id == 0


async def test_a_responses_api_request_on_the_socket_streams_its_typed_events(gateway):
    socket = connect(gateway)
    await socket.connect()
    await receive(socket)
    await socket.send_json_to({"type": "chat.request", "id": "r1", "api": "responses", "model": "gpt-4o-mini",
                               "input": "Hello", "instructions": "Be brief."})
    events = []
    while not events or events[-1]["type"] != "response.completed":
        frame = await receive(socket)
        assert frame["type"] == "response.event" and frame["id"] == "r1", frame
        events.append(frame["event"])
    assert events[0]["type"] == "response.created"
    text = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    response = events[-1]["response"]
    assert response["output"][0]["content"][0]["text"] == text != ""
    record = await UsageRecord.objects.aget(response_id=response["id"])
    assert record.endpoint == "responses" and record.stream
    assert record.completion_tokens == response["usage"]["output_tokens"]

    await socket.send_json_to({"type": "chat.request", "id": "r2", "api": "responses", "model": "gpt-4o-mini",
                               "input": "Hello", "store": True})
    error = await receive(socket)
    assert error["type"] == "error" and error["status"] == 400 and error["error"]["param"] == "store"
    await socket.send_json_to({"type": "chat.request", "id": "r3", "api": "fax", "model": "gpt-4o-mini"})
    error = await receive(socket)
    assert error["type"] == "error" and error["error"]["param"] == "api"
    await socket.disconnect()
