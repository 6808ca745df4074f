"""The tenant API's own ASGI app (gateway_site/api_app.py), as a server calls it through
`gateway_site.asgi.application`: its routes are answered in the event loop, without Django's
thread per request or middleware; every other route keeps Django's handling."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading

import httpx
import pytest
from django.core import signals
from prometheus_client import REGISTRY
from django.http import JsonResponse
from django.urls import resolve

from gateway_site.api_app import ApiApplication
from gateway_site.asgi import application
from django.urls import path

from routing.urls import tenant_api_parameterised, tenant_api_routes

class Served:
    def __init__(self, sent: list) -> None:
        start = next(m for m in sent if m["type"] == "http.response.start")
        self.status = start["status"]
        self.headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
        self.body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    def json(self):
        return json.loads(self.body)


async def serve(app, path: str, *, method: str = "GET", body: bytes = b"", headers=(), scheme: str = "http",
                query: bytes = b"", client_gone: asyncio.Event | None = None) -> Served:
    """One request through `app`; the client stays until `client_gone` is set (or the answer)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": scheme, "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
        "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    requests = [{"type": "http.request", "body": body, "more_body": False}]
    gone = client_gone or asyncio.Event()
    sent: list = []

    async def receive():
        if requests:
            return requests.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    try:
        await app(scope, receive, send)
    finally:
        gone.set()
    return Served(sent) if sent else None


class Signals:
    """The threads on which `request_started` and `request_finished` are sent."""

    def __enter__(self) -> list[threading.Thread]:
        self.threads: list[threading.Thread] = []
        signals.request_started.connect(self.note, weak=False)
        signals.request_finished.connect(self.note, weak=False)
        return self.threads

    def note(self, **kwargs) -> None:
        self.threads.append(threading.current_thread())

    def __exit__(self, *exc) -> None:
        signals.request_started.disconnect(self.note)
        signals.request_finished.disconnect(self.note)


def test_the_tenant_routes_are_one_table_that_the_urlconf_lists_too():
    routes = tenant_api_routes()
    assert set(routes) == {
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/messages",
        "/v1/messages/count_tokens", "/v1/usage", "/v1/feedback", "/v1/responses", "/v1/responses/input_tokens",
        "/v1/files", "/v1/batches", "/v1/images/generations",
        "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech", "/v1/moderations",
        "/v1/rerank", "/v2/rerank",
    }
    for route, view in routes.items():
        assert resolve(route).func is view  # the schema and reverse() see the view the app serves
    patterns = {str(pattern.pattern): pattern.callback for pattern in tenant_api_parameterised()}
    assert set(patterns) == {
        "v1/responses/<str:response_id>", "v1/responses/<str:response_id>/input_items",
        "v1/responses/<str:response_id>/cancel",
        "v1/files/<str:file_id>", "v1/files/<str:file_id>/content",
        "v1/batches/<str:batch_id>", "v1/batches/<str:batch_id>/cancel",
    }
    for pattern, view in patterns.items():
        assert resolve("/" + pattern.replace("<str:response_id>", "resp_1")).func is view


async def test_a_route_with_a_path_parameter_gets_it_and_is_labelled_by_its_pattern():
    async def item(request, item_id):
        return JsonResponse({"item": item_id})

    app = ApiApplication({}, fallback=None, patterns=[path("v1/items/<str:item_id>", item)])
    served = await serve(app, "/v1/items/abc")

    assert served.status == 200 and served.json() == {"item": "abc"}
    assert REGISTRY.get_sample_value(
        "gateway_http_responses_total", {"route": "v1/items/<str:item_id>", "method": "GET", "status": "200"}
    ) is not None


async def test_tenant_api_requests_run_in_the_event_loop_without_django_middleware():
    with Signals() as threads:
        served = await serve(application, "/v1/models")

    assert served.status == 401 and served.json()["error"]["type"] == "invalid_request_error"
    # Both signals, once each, on the event loop's own thread: no thread hop for either.
    assert threads == [threading.current_thread()] * 2
    assert served.headers["x-content-type-options"] == "nosniff"  # SecurityMiddleware's hooks, inline
    assert served.headers["x-request-id"]
    assert "x-frame-options" not in served.headers and "vary" not in served.headers
    assert "set-cookie" not in served.headers  # no session, no CSRF cookie


@pytest.mark.django_db(transaction=True)
async def test_other_routes_keep_djangos_handling():
    with Signals() as threads:
        health = await serve(application, "/health")
        page = await serve(application, "/admin/login/")

    assert health.status == 200 and health.headers["x-request-id"]
    assert len(threads) == 4 and threading.current_thread() not in threads  # Django's thread per request
    assert page.headers["x-frame-options"] == "DENY" and "csrftoken" in page.headers["set-cookie"]


async def test_a_method_a_route_does_not_take_is_405_with_allow():
    served = await serve(application, "/v1/chat/completions", method="GET")
    assert served.status == 405 and served.headers["allow"] == "POST"
    assert served.json()["error"]["code"] == "method_not_allowed"


async def test_a_query_string_that_is_not_utf8_is_a_400():
    with Signals() as threads:
        served = await serve(application, "/v1/usage", query=b"start=\xff")
    assert served.status == 400 and served.json()["error"]["type"] == "invalid_request_error"
    assert len(threads) == 2


async def test_a_body_past_the_limit_is_413(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = settings.GATEWAY_MAX_BODY_BYTES = 100
    served = await serve(application, "/v1/chat/completions", method="POST", body=b"x" * 101,
                         headers=[(b"content-type", b"application/json")])
    assert served.status == 413 and served.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_an_unknown_v1_route_is_a_json_404_whatever_the_method(method):
    served = await serve(application, "/v1/no-such-route", method=method, body=b"{}")
    assert served.status == 404
    assert served.json()["error"]["message"] == f"Unknown API route: {method} /v1/no-such-route"


@pytest.mark.django_db(transaction=True)
async def test_the_operator_api_under_v1_is_still_djangos():
    served = await serve(application, "/v1/tenants", method="POST", body=b"{}",
                         headers=[(b"content-type", b"application/json")])
    assert served.status in (401, 403)  # DRF's authentication, not the API's 404


async def test_a_client_that_goes_away_cancels_the_view():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(request):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    gone = asyncio.Event()
    app = ApiApplication({"/v1/slow": slow}, fallback=None)
    before = in_flight()
    with Signals() as threads:
        serving = asyncio.create_task(serve(app, "/v1/slow", client_gone=gone))
        await started.wait()
        assert in_flight() == before + 1
        gone.set()
        assert await serving is None  # nothing sent: the client is gone
    assert cancelled.is_set()
    assert threads == [threading.current_thread()] * 2  # request_finished still sent
    assert in_flight() == before  # the request no longer counts as in flight


def in_flight() -> float:
    return REGISTRY.get_sample_value("gateway_http_requests_in_flight")


async def test_a_view_that_fails_is_a_500_in_the_api_error_shape(caplog):
    async def broken(request):
        raise RuntimeError("boom")

    served = await serve(ApiApplication({"/v1/broken": broken}, fallback=None), "/v1/broken")

    assert served.status == 500 and served.json()["error"]["type"] == "api_error"
    assert served.headers["x-request-id"]
    assert "Internal Server Error: GET /v1/broken" in caplog.text and "RuntimeError: boom" in caplog.text


async def test_https_is_required_where_the_settings_say_so(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600

    async def ok(request):
        return JsonResponse({"ok": True})

    app = ApiApplication({"/v1/ok": ok}, fallback=None)
    plain = await serve(app, "/v1/ok")
    secure = await serve(app, "/v1/ok", scheme="https")

    assert plain.status == 301 and plain.headers["location"] == "https://testserver/v1/ok"
    assert secure.status == 200 and secure.headers["strict-transport-security"] == "max-age=3600"


@pytest.mark.django_db(transaction=True)
async def test_streams_go_out_part_by_part_through_a_real_client(gateway):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver") as c:
        async with c.stream("POST", "/v1/chat/completions", headers=gateway.auth, json={
            "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        }) as response:
            events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    assert events[-1] == "data: [DONE]" and len(events) > 2


class _Order(logging.Handler):
    """Notes each log line of the request log and the access log in `events`."""

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(("log", record.getMessage()))


@pytest.mark.django_db(transaction=True)
async def test_a_tenant_api_answer_goes_out_before_its_log_lines_and_metrics(gateway):
    from kernel import metrics

    events: list = []
    order = _Order(events)
    loggers = [logging.getLogger("routing.record"), logging.getLogger("gateway.access")]
    for each in loggers:
        each.addHandler(order)
    observe = metrics.request_observe

    def observed(**kwargs) -> None:
        events.append(("metrics", kwargs["fields"]["status"]))
        observe(**kwargs)

    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {gateway.raw_key}".encode())]

    sent: list = []

    async def send(message):
        events.append(("send", message["type"], message.get("status")))
        sent.append(message)

    metrics.request_observe = observed
    try:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
            "headers": [(b"host", b"testserver"), *headers],
        }
        requests = [{"type": "http.request", "body": body, "more_body": False}]
        client_gone = asyncio.Event()

        async def receive():
            if requests:
                return requests.pop()
            await client_gone.wait()
            return {"type": "http.disconnect"}

        try:
            await application(scope, receive, send)
        finally:
            client_gone.set()
    finally:
        metrics.request_observe = observe
        for each in loggers:
            each.removeHandler(order)

    assert events[:2] == [("send", "http.response.start", 200), ("send", "http.response.body", None)]
    # All three follow the answer, and all three are done by the time the request is.
    assert sorted(events[2:]) == sorted([
        ("metrics", "success"), ("log", "request chat.completions success"),
        ("log", "http POST v1/chat/completions 200"),
    ])


def test_after_response_work_runs_at_once_outside_a_tenant_api_request_and_each_on_its_own():
    from kernel.after_response import after_response, after_response_begin, after_response_run

    done: list[str] = []
    after_response(lambda: done.append("at once"))
    assert done == ["at once"]

    pending = after_response_begin()
    after_response(lambda: done.append("first"))
    after_response(lambda: 1 / 0)  # logged; the next one still runs
    after_response(lambda: done.append("third"))
    assert done == ["at once"]
    copied = contextvars.copy_context()  # a task started during the request keeps this context
    after_response_run(pending)
    assert done == ["at once", "first", "third"]
    after_response(lambda: done.append("after the run: at once"))
    assert done[-1] == "after the run: at once"
    copied.run(after_response, lambda: done.append("in a copy of the request's context: at once"))
    assert done[-1] == "in a copy of the request's context: at once"


@pytest.mark.parametrize("declared", [True, False])
async def test_an_upload_past_its_routes_limit_is_413_and_never_reaches_the_view(settings, declared):
    """A view marked with `kernel.http.body_limit` has its own limit: past it (by Content-Length,
    or by the bytes of a chunked body as they come) the rest is read and dropped, the view never
    runs, and the answer is the API's 413."""
    from kernel.http import body_limit

    called = []

    @body_limit(1000)
    async def upload(request):
        called.append(request)
        return JsonResponse({"size": len(request.body)})

    app = ApiApplication({"/v1/upload": upload}, fallback=None)
    parts = [b"x" * 400] * 5  # 2000 bytes, in five messages
    messages = [{"type": "http.request", "body": part, "more_body": i < 4} for i, part in enumerate(parts)]
    headers = [(b"host", b"testserver")] + ([(b"content-length", b"2000")] if declared else [])
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/upload", "raw_path": b"/v1/upload", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 40000), "server": ("testserver", 80)}
    sent: list = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    served = Served(sent)
    assert served.status == 413 and served.json()["error"]["code"] == "request_too_large"
    assert not called and not messages  # the whole body was read (the client waits for that), none of it kept
    small = [{"type": "http.request", "body": b"y" * 1000, "more_body": False}]
    sent.clear()

    async def receive_small():
        return small.pop(0) if small else {"type": "http.disconnect"}

    await app({**scope, "headers": [(b"host", b"testserver")]}, receive_small, send)
    assert Served(sent).json() == {"size": 1000}
