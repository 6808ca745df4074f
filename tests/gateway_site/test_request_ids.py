"""Request ids: accepted from the client or made, returned, kept apart from the record's unique id,
sent to the provider; JSON log lines carry them and never the prompt of a tenant that keeps none."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from accounting.models import Tenant, UsageRecord
from kernel.logs import JsonFormatter, RequestIdFilter
from kernel.request_ids import client_id_clean
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert
from tests.asgi_client import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)


def body(content: str = "Hello") -> str:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})


async def chat(gateway, content: str = "Hello", **headers):
    return await ApiClient().post(
        "/v1/chat/completions", body(content), content_type="application/json",
        headers={**gateway.auth, **headers},
    )


async def test_without_a_client_id_the_gateway_id_is_returned_and_recorded(gateway):
    response = await chat(gateway)
    assert response.status_code == 200
    record = await UsageRecord.objects.aget()
    assert response.headers["x-request-id"] == response.headers["x-gateway-request-id"] == str(record.request_id)


async def test_a_client_id_is_returned_and_may_repeat_while_records_stay_unique(gateway):
    first = await chat(gateway, **{"x-request-id": "trace-42:abc/DEF"})
    second = await chat(gateway, **{"x-request-id": "trace-42:abc/DEF"})
    assert first.headers["x-request-id"] == second.headers["x-request-id"] == "trace-42:abc/DEF"
    ids = {str(r.request_id) async for r in UsageRecord.objects.all()}
    assert ids == {first.headers["x-gateway-request-id"], second.headers["x-gateway-request-id"]}
    assert len(ids) == 2


@pytest.mark.parametrize("bad", ["", "a" * 129, "line\nbreak", 'quote"d', "space d", "ünïcode"])
def test_a_client_id_that_could_forge_logs_or_headers_is_ignored(bad):
    assert client_id_clean(bad) == ""


async def test_an_invalid_client_id_gets_the_gateway_id(gateway):
    response = await chat(gateway, **{"x-request-id": "x" * 200})
    assert response.headers["x-request-id"] == response.headers["x-gateway-request-id"]


async def test_errors_and_other_endpoints_carry_the_id_too(gateway, db):
    bad_key = await ApiClient().post(
        "/v1/chat/completions", body(), content_type="application/json",
        headers={"Authorization": "Bearer sk-gw-nope", "x-request-id": "req-401"},
    )
    assert bad_key.status_code == 401 and bad_key.headers["x-request-id"] == "req-401"
    health = await AsyncClient().get("/health", headers={"x-request-id": "probe-1"})
    assert health.headers["x-request-id"] == "probe-1"


@pytest.fixture
def recording_upstream():
    """A real OpenAI-shaped upstream that remembers the headers of each request."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            answer = json.dumps({
                "id": "up-1", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


async def test_the_provider_gets_the_correlation_id(gateway, recording_upstream):
    url, seen = recording_upstream
    provider = await Provider.objects.acreate(name="recorder", type="openai", api_base=url, priority=-1)
    await sync_to_async(provider_key_upsert)(provider=provider, name="default", secret="sk-recorder")
    await ProviderModel.objects.acreate(provider=provider, alias="gpt-4o-mini", upstream_model="m")
    response = await chat(gateway, **{"x-request-id": "corr-7"})
    assert response.headers["x-gateway-provider"] == "recorder"
    assert seen[-1]["x-request-id"] == "corr-7"
    await chat(gateway)
    record = await UsageRecord.objects.order_by("-created_at").afirst()
    assert seen[-1]["x-request-id"] == str(record.request_id)


@pytest.fixture
def json_lines():
    """Every log record of the test, as the JSON lines the console handler writes."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)


async def test_log_lines_carry_the_request_id_and_no_prompt(gateway, json_lines):
    await chat(gateway, "violet-harbour-prompt-text", **{"x-request-id": "logs-1"})
    entries = [json.loads(line) for line in json_lines]
    mine = [entry for entry in entries if entry.get("request_id") == "logs-1"]
    assert {"routing.record", "gateway.access"} <= {entry["logger"] for entry in mine}
    [request_line] = [entry for entry in mine if entry["logger"] == "routing.record"]
    assert request_line["tenant"] == "acme" and request_line["status"] == "success"
    assert request_line["prompt_tokens"] > 0 and "prompt" not in request_line
    assert "violet-harbour-prompt-text" not in "\n".join(json_lines)
    assert gateway.raw_key not in "\n".join(json_lines)


async def test_a_tenant_that_keeps_content_has_its_prompt_in_the_request_line(gateway, json_lines):
    tenant = await Tenant.objects.aget(pk=gateway.tenant.pk)
    tenant.keep_content = True
    await tenant.asave(update_fields=["keep_content"])
    await chat(gateway, "kept-prompt-text", **{"x-request-id": "logs-2"})
    [request_line] = [
        json.loads(line) for line in json_lines
        if '"routing.record"' in line and '"logs-2"' in line
    ]
    assert request_line["prompt"] == [{"role": "user", "content": "kept-prompt-text"}]


def test_the_formatter_blanks_anything_shaped_like_a_key():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "got Bearer abc.def and sk-proj-1234567890", (), None)
    line = JsonFormatter("%(message)s").format(record)
    assert "abc.def" not in line and "sk-proj-1234567890" not in line
    assert json.loads(line)["message"] == "got Bearer [redacted] and [redacted]"
