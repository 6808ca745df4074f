"""The ASGI handler (gateway_site/asgi_handler.py) as a server calls it: the tenant API is answered
without thread hops, every other route keeps Django's thread per request."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading

import pytest
from django.core import signals

from gateway_site.asgi_handler import GatewayASGIHandler


async def serve(path: str) -> tuple[int, bytes, list[threading.Thread]]:
    """One GET through the handler; returns the status, the body and the threads on which
    `request_started` and `request_finished` were sent."""
    threads: list[threading.Thread] = []

    def note(**kwargs) -> None:
        threads.append(threading.current_thread())

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
    }
    requests = [{"type": "http.request", "body": b"", "more_body": False}]
    client_gone = asyncio.Event()

    async def receive():
        if requests:
            return requests.pop()
        await client_gone.wait()  # the client stays until the test ends
        return {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    signals.request_started.connect(note, weak=False)
    signals.request_finished.connect(note, weak=False)
    try:
        await GatewayASGIHandler()(scope, receive, send)
    finally:
        signals.request_started.disconnect(note)
        signals.request_finished.disconnect(note)
        client_gone.set()
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, threads


async def test_tenant_api_requests_send_their_signals_in_the_event_loop():
    status, body, threads = await serve("/v1/models")

    assert status == 401 and json.loads(body)["error"]["type"] == "invalid_request_error"
    # Both signals, once each, on the event loop's own thread: no thread hop for either.
    assert threads == [threading.current_thread()] * 2


@pytest.mark.django_db(transaction=True)
async def test_other_routes_keep_djangos_thread_per_request():
    status, _, threads = await serve("/health")

    assert status == 200
    assert len(threads) == 2 and threading.current_thread() not in threads


class _Order(logging.Handler):
    """Notes each log line of the request log and the access log in `events`."""

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(("log", record.getMessage()))


@pytest.mark.django_db(transaction=True)
async def test_a_tenant_api_answer_goes_out_before_its_log_lines_and_metrics(gateway):
    from gateway_site import metrics

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
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {gateway.raw_key}".encode())],
    }
    requests = [{"type": "http.request", "body": body, "more_body": False}]
    client_gone = asyncio.Event()

    async def receive():
        if requests:
            return requests.pop()
        await client_gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        events.append(("send", message["type"], message.get("status")))

    metrics.request_observe = observed
    try:
        await GatewayASGIHandler()(scope, receive, send)
    finally:
        metrics.request_observe = observe
        for each in loggers:
            each.removeHandler(order)
        client_gone.set()

    assert events[:2] == [("send", "http.response.start", 200), ("send", "http.response.body", None)]
    # All three follow the answer, and all three are done by the time the request is.
    assert sorted(events[2:]) == sorted([
        ("metrics", "success"), ("log", "request chat.completions success"),
        ("log", "http POST v1/chat/completions 200"),
    ])


def test_after_response_work_runs_at_once_outside_a_tenant_api_request_and_each_on_its_own():
    from gateway_site.after_response import after_response, after_response_begin, after_response_run

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
