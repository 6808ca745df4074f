"""The ASGI handler (gateway_site/asgi_handler.py) as a server calls it: the tenant API is answered
without thread hops, every other route keeps Django's thread per request."""

from __future__ import annotations

import asyncio
import json
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
