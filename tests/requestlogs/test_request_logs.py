"""The request log explorer: who sees which requests (list, detail, CSV), the filters, keyset pages
and the export, on records written by the tests; and a detail page of a request that went through
the real pipeline (failover, a hard budget's reservation, kept content)."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from accounting.models import Budget, TenantMembership, UsageContent, UsageRecord
from accounting.services import api_key_create, tenant_create
from feedback.models import Feedback
from guardrails.models import GuardrailEvent
from tests.conftest import logged_in_client, role_join

UTC = dt_timezone.utc
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def record(tenant, *, at=T0, **fields) -> UsageRecord:
    values = {
        "endpoint": "chat.completions", "requested_model": "gpt-4o-mini", "served_model": "gpt-4o-mini-2024-07-18",
        "provider_name": "openai", "status": "success", "prompt_tokens": 10, "completion_tokens": 5,
        "cost_usd": Decimal("0.00001"), "latency_ms": 300, "ttft_ms": 120,
        "attempts": [{"provider": "openai", "model": "gpt-4o-mini", "deployment": "d1", "status": "success",
                      "latency_ms": 280, "error_class": "", "upstream_status": None, "reason": ""}],
        **fields,
    }
    return UsageRecord.objects.create(tenant=tenant, created_at=at, **values)


def ids(response) -> list[str]:
    return re.findall(r'<tr data-request-id="([0-9a-f-]{36})"', response.content.decode())


@pytest.fixture
def tenants(db):
    acme, globex = tenant_create(slug="acme", name="Acme"), tenant_create(slug="globex", name="Globex")
    web, _ = api_key_create(tenant=acme, name="web")
    batch, _ = api_key_create(tenant=acme, name="batch")
    return {"acme": acme, "globex": globex, "web": web, "batch": batch}


@pytest.fixture
def alice(tenants):
    return logged_in_client("alice", tenant=tenants["acme"])


@pytest.fixture
def data(tenants):
    """Acme's varied records, newest last, and one of Globex's."""
    acme, web, batch = tenants["acme"], tenants["web"], tenants["batch"]
    rows = {
        "plain": record(acme, at=T0, api_key=web),
        "error": record(acme, at=T0 + timedelta(minutes=1), api_key=batch, status="error", http_status=502,
                        error_class="upstream_server", cost_usd=Decimal("0"), provider_name="anthropic"),
        "tagged": record(acme, at=T0 + timedelta(minutes=2), api_key=web, tags=["billing", "=cmd"], route="cheap",
                         end_user="-user-7", variant="b", conversation_id="conv-1"),
        "dear": record(acme, at=T0 + timedelta(minutes=3), requested_model="smart", served_model="claude-haiku-4-5",
                       cost_usd=Decimal("0.5"), latency_ms=9000, conversation_id="conv-1"),
        "cancelled": record(acme, at=T0 + timedelta(minutes=4), status="cancelled", error_class="cancelled"),
        "secret": record(tenants["globex"], at=T0 + timedelta(minutes=5), requested_model="globex-private"),
    }
    return rows


def test_a_member_sees_their_requests_newest_first_with_the_columns(alice, data):
    response = alice.get("/dashboard/acme/requests/")
    assert response.status_code == 200
    expected = [data[name].request_id for name in ("cancelled", "dear", "tagged", "error", "plain")]
    assert ids(response) == [str(value) for value in expected]
    html = response.content.decode()
    assert "globex-private" not in html and str(data["secret"].request_id) not in html
    assert "web (sk-gw-" in html and "upstream_server" in html and "claude-haiku-4-5" in html
    assert 'href="/dashboard/acme/requests/"' in alice.get("/dashboard/acme/").content.decode()


def test_isolation_by_list_detail_and_csv(alice, data, tenants):
    secret = data["secret"].request_id
    for url in ("/dashboard/globex/requests/", f"/dashboard/globex/requests/{secret}/",
                "/dashboard/globex/requests/export.csv", "/dashboard/nope/requests/"):
        assert alice.get(url).status_code == 404, url
    # Another tenant's request id under one's own tenant: the same 404 as an unknown id.
    assert alice.get(f"/dashboard/acme/requests/{secret}/").status_code == 404
    assert alice.get(f"/dashboard/acme/requests/{uuid.uuid4()}/").status_code == 404
    assert ids(alice.get("/dashboard/acme/requests/", {"request_id": str(secret)})) == []
    # The operator page sends a member to their own tenant's, with the filters.
    response = alice.get("/dashboard/requests/?status=error")
    assert response.status_code == 302 and response["Location"] == "/dashboard/acme/requests/?status=error"
    response = alice.get("/dashboard/requests/export.csv?tenant=globex")
    assert response.status_code == 302 and response["Location"].startswith("/dashboard/acme/requests/export.csv")


def test_non_members_and_anonymous_are_refused(tenants, data, client):
    stranger = logged_in_client("stranger")
    assert stranger.get("/dashboard/requests/").status_code == 403
    assert stranger.get("/dashboard/acme/requests/").status_code == 404
    assert stranger.get(f"/dashboard/acme/requests/{data['plain'].request_id}/").status_code == 404
    staff_without_permission = logged_in_client("staffer", staff=True)
    assert staff_without_permission.get("/dashboard/requests/").status_code == 403
    response = client.get("/dashboard/acme/requests/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")


def test_an_operator_sees_every_tenant_and_filters_by_tenant(data):
    olga = logged_in_client("olga", staff=True, group="Gateway viewers")
    response = olga.get("/dashboard/requests/")
    assert response.status_code == 200 and len(ids(response)) == 6
    html = response.content.decode()
    assert f'/dashboard/globex/requests/{data["secret"].request_id}/' in html
    assert ids(olga.get("/dashboard/requests/", {"tenant": "globex"})) == [str(data["secret"].request_id)]
    assert olga.get(f"/dashboard/globex/requests/{data['secret'].request_id}/").status_code == 200


@pytest.mark.parametrize(("params", "names"), [
    ({"status": "ok"}, ["dear", "tagged", "plain"]),
    ({"status": "error"}, ["error"]),
    ({"status": "cancelled"}, ["cancelled"]),
    ({"status": "upstream_server"}, ["error"]),
    ({"model": "smart"}, ["dear"]),
    ({"model": "claude-haiku-4-5"}, ["dear"]),
    ({"provider": "anthropic"}, ["error"]),
    ({"route": "cheap"}, ["tagged"]),
    ({"tag": "billing"}, ["tagged"]),
    ({"tag": "bill"}, []),
    ({"user": "-user-7"}, ["tagged"]),
    ({"variant": "b"}, ["tagged"]),
    ({"min_cost": "0.1"}, ["dear"]),
    ({"min_latency": "5000"}, ["dear"]),
    ({"key": "none"}, ["cancelled", "dear"]),
    ({"since": "2026-12-01T12:01", "until": "2026-12-01T12:03"}, ["tagged", "error"]),
    ({"since": "2026-12-01 12:03:00+00:00"}, ["cancelled", "dear"]),
    ({"until": "2026-12-01"}, []),
    ({"status": "ok", "min_latency": "1", "model": "gpt-4o-mini", "tag": "billing"}, ["tagged"]),
])
def test_filters(alice, data, params, names):
    response = alice.get("/dashboard/acme/requests/", params)
    assert response.status_code == 200
    assert ids(response) == [str(data[name].request_id) for name in names]


def test_filter_by_key_and_by_request_id(alice, data, tenants):
    assert ids(alice.get("/dashboard/acme/requests/", {"key": tenants["batch"].pk})) == [
        str(data["error"].request_id)]
    assert ids(alice.get("/dashboard/acme/requests/", {"request_id": f" {data['dear'].request_id} "})) == [
        str(data["dear"].request_id)]


@pytest.mark.parametrize(("params", "named"), [
    ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-01"}, "until"),
    ({"since": "2026-12-02", "until": "2026-12-01"}, "until"),
    ({"status": "Bad Status!"}, "status"),
    ({"key": "web"}, "key"),
    ({"key": "-1"}, "key"),
    ({"min_cost": "cheap"}, "min_cost"),
    ({"min_cost": "-1"}, "min_cost"),
    ({"min_cost": "NaN"}, "min_cost"),
    ({"min_latency": "1.5"}, "min_latency"),
    ({"request_id": "123"}, "request_id"),
    ({"user": "x" * 300}, "user"),
    ({"after": "2026-12-01"}, "after"),
    ({"before": "1.2.3"}, "before"),
    ({"after": "99999999999999999999.1"}, "after"),
])
def test_bad_filter_values_get_a_clear_message(alice, data, params, named):
    response = alice.get("/dashboard/acme/requests/", params)
    assert response.status_code == 400
    html = response.content.decode()
    assert f'data-error="{named}"' in html and "nothing was searched" in html and ids(response) == []
    export = alice.get("/dashboard/acme/requests/export.csv", params)
    assert export.status_code == 400 and f"{named}:" in export.content.decode()


def test_keyset_pages_walk_every_record_once_in_both_directions(alice, tenants):
    acme = tenants["acme"]
    # 120 records; some share a created_at, which the id breaks.
    made = [record(acme, at=T0 + timedelta(seconds=i // 3)) for i in range(120)]
    newest_first = [str(r.request_id) for r in sorted(made, key=lambda r: (r.created_at, r.pk), reverse=True)]
    pages, url = [], "/dashboard/acme/requests/?status=ok"
    while url:
        response = alice.get(url)
        pages.append(ids(response))
        older = re.search(r'href="\?([^"]*)" data-page="older"', response.content.decode())
        url = "/dashboard/acme/requests/?" + older.group(1).replace("&amp;", "&") if older else None
    assert [len(page) for page in pages] == [50, 50, 20]
    assert sum(pages, []) == newest_first
    assert "status=ok" in older_link(alice, "/dashboard/acme/requests/?status=ok")
    # Back from the last page, newer link by newer link, gives the same pages.
    response = alice.get("/dashboard/acme/requests/?" + older_link(alice, older_link_url(alice, 2)))
    assert ids(response) == pages[2]
    back = []
    while True:
        newer = re.search(r'href="\?([^"]*)" data-page="newer"', response.content.decode())
        if not newer:
            break
        response = alice.get("/dashboard/acme/requests/?" + newer.group(1).replace("&amp;", "&"))
        back.append(ids(response))
    assert back == [pages[1], pages[0]]


def older_link(client, url: str) -> str:
    found = re.search(r'href="\?([^"]*)" data-page="older"', client.get(url).content.decode())
    return found.group(1).replace("&amp;", "&")


def older_link_url(client, hops: int) -> str:
    url = "/dashboard/acme/requests/"
    for _ in range(hops - 1):
        url = "/dashboard/acme/requests/?" + older_link(client, url)
    return url


def test_a_new_record_does_not_shift_the_older_pages(alice, tenants):
    acme = tenants["acme"]
    made = [record(acme, at=T0 + timedelta(seconds=i)) for i in range(60)]
    link = older_link(alice, "/dashboard/acme/requests/")
    record(acme, at=T0 + timedelta(hours=1))  # arrives between two page loads
    assert ids(alice.get("/dashboard/acme/requests/?" + link)) == [str(r.request_id) for r in made[9::-1]]


async def _csv_of(user, url: str) -> tuple[object, list[dict]]:
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(url)
    assert response.streaming
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    return response, list(csv.DictReader(io.StringIO(body)))


@pytest.mark.django_db(transaction=True)
async def test_csv_exports_the_filtered_set_streamed(monkeypatch):
    from requestlogs import selectors

    monkeypatch.setattr(selectors, "EXPORT_CHUNK", 7)  # several chunks from a few rows
    acme, web, user = await sync_to_async(_export_data)()
    response, rows = await _csv_of(user, "/dashboard/acme/requests/export.csv?status=ok")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert 'filename="acme-requests.csv"' in response["Content-Disposition"]
    assert len(rows) == 20 and all(row["status"] == "success" for row in rows)
    assert [row["created_at"] for row in rows] == sorted((row["created_at"] for row in rows), reverse=True)
    assert len({row["request_id"] for row in rows}) == 20
    first = rows[0]
    assert first["tenant"] == "acme" and first["api_key"].startswith("web (sk-gw-")
    assert first["cost_usd"] == "0.00001000" and first["reserved_usd"] == "0.01000000"
    assert first["end_user"] == "'=HYPERLINK(1)" and first["tags"] == "a b" and first["rating"] == "down"
    assert first["guardrail"] == "redact"
    _, errors = await _csv_of(user, "/dashboard/acme/requests/export.csv?status=error")
    assert len(errors) == 3 and all(row["error_class"] == "timeout" for row in errors)
    _, mine = await _csv_of(user, "/dashboard/acme/requests/export.csv?tenant=globex")
    assert len(mine) == 23  # tenant= is for operators: a member's export stays their own tenant's


def _export_data():
    acme, globex = tenant_create(slug="acme"), tenant_create(slug="globex")
    web, _ = api_key_create(tenant=acme, name="web")
    for i in range(20):
        last = record(acme, at=T0 + timedelta(seconds=i), api_key=web, reserved_usd=Decimal("0.01"),
                      end_user="=HYPERLINK(1)", tags=["a", "b"])
    for i in range(3):
        record(acme, at=T0 - timedelta(seconds=i), status="error", error_class="timeout")
    record(globex, at=T0)
    Feedback.objects.create(tenant=acme, usage_record=last, response_id="r", rating=-1)
    GuardrailEvent.objects.create(tenant=acme, request_id=last.request_id, kind="email", direction="input",
                                  action="redact")
    from django.contrib.auth.models import User

    user = User.objects.create_user("alice", password="pw")
    TenantMembership.objects.create(user=user, tenant=acme)
    return acme, web, user


def test_detail_page_shows_feedback_guardrails_and_the_conversation(alice, data, tenants):
    acme, tagged, dear = tenants["acme"], data["tagged"], data["dear"]
    Feedback.objects.create(tenant=acme, usage_record=dear, response_id="r1", rating=-1,
                            correction="Paris is the capital.", tags=["wrong"], comment="no")
    GuardrailEvent.objects.create(tenant=acme, request_id=dear.request_id, kind="email", direction="input",
                                  action="redact", location="messages[0].content", snippet="xxx@xxx.xx")
    GuardrailEvent.objects.create(tenant=tenants["globex"], request_id=uuid.uuid4(), kind="email",
                                  direction="input", action="block")
    response = alice.get(f"/dashboard/acme/requests/{dear.request_id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Paris is the capital." in html and "xxx@xxx.xx" in html and "redact" in html and "down" in html
    assert f'/dashboard/acme/requests/{tagged.request_id}/' in html  # the conversation's other request
    assert "does not keep prompts and answers" in html
    listing = alice.get("/dashboard/acme/requests/").content.decode()
    row = re.search(rf'<tr data-request-id="{dear.request_id}".*?</tr>', listing, re.S).group(0)
    assert "redact" in row and "down" in row


# --- a request through the real pipeline ----------------------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_a_failed_over_request_shows_its_timeline_reservation_and_content(gateway):
    from tests.asgi_client import ApiClient

    await sync_to_async(_failover_route)(gateway)
    body = {"model": "smart", "max_tokens": 50, "metadata": {"conversation_id": "conv-42"},
            "messages": [{"role": "user", "content": "Say hello to the log explorer"}]}
    response = await ApiClient().post("/v1/chat/completions", json.dumps(body), headers=gateway.auth)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-gateway-request-id"]
    answer = response.json()["choices"][0]["message"]["content"]
    recorded = await UsageRecord.objects.aget(request_id=request_id)
    # The reservation: 50 output tokens at $0.60 per million plus the prompt, held before the call.
    assert recorded.reserved_usd is not None and recorded.reserved_usd >= Decimal("0.00003")
    assert recorded.cost_usd <= recorded.reserved_usd

    user = await sync_to_async(_member)(gateway.tenant)
    client = AsyncClient()
    await client.aforce_login(user)
    page = await client.get(f"/dashboard/acme/requests/{request_id}/")
    assert page.status_code == 200
    html = page.content.decode()
    attempts = re.findall(r'data-attempt="(\d)" data-attempt-status="(\w+)"', html)
    assert attempts == [("1", "error"), ("2", "success")]
    assert "down-provider" in html and "connection" in html
    assert f"${recorded.reserved_usd:.8f}" in html and f"${recorded.cost_usd:.8f}" in html
    assert "Say hello to the log explorer" in html and answer[:20] in html
    listing = await client.get("/dashboard/acme/requests/", {"request_id": request_id})
    assert ids(listing) == [request_id]


def _failover_route(gateway):
    from providers.models import Provider, ProviderModel
    from providers.services import provider_key_upsert
    from routing.models import Deployment, RouteGroup, RoutingRule
    from tests.conftest import free_port

    tenant = gateway.tenant
    tenant.keep_content = True
    tenant.save()
    Budget.objects.create(tenant=tenant, amount_usd=Decimal("10"), period="monthly", hard=True)
    group = RouteGroup.objects.create(name="smart-group", strategy="fallback", retries=0, total_timeout_seconds=20)
    down = Provider.objects.create(name="down-provider", type="openai", api_base=f"http://127.0.0.1:{free_port()}/v1")
    provider_key_upsert(provider=down, name="default", secret="sk-down-provider-0001")
    for priority, provider in enumerate((down, gateway.provider)):
        model = ProviderModel.objects.create(
            provider=provider, alias="smart", upstream_model="gpt-4o-mini",
            input_price_per_million="0.15", output_price_per_million="0.60", context_window=128000,
        )
        Deployment.objects.create(group=group, provider_model=model, priority=priority, weight=1)
    RoutingRule.objects.create(name="smart-rule", model="smart", group=group)


def _member(tenant):
    from django.contrib.auth.models import User

    user = User.objects.create_user("member", password="pw")
    TenantMembership.objects.create(user=user, tenant=tenant)
    return user


def _links(response, name: str) -> str | None:
    found = re.search(rf'href="\?([^"]*)" data-page="{name}"', response.content.decode())
    return found.group(1).replace("&amp;", "&") if found else None


def test_a_sparse_filter_reads_a_bounded_stretch_per_page_and_misses_nothing(alice, tenants, monkeypatch):
    from requestlogs import selectors

    monkeypatch.setattr(selectors, "SCAN_STRETCHES", (3, 7))
    monkeypatch.setattr(selectors, "PAGE_SIZE", 2)
    acme = tenants["acme"]
    made = [record(acme, at=T0 + timedelta(seconds=i // 2), requested_model="rare" if i % 5 == 0 else "common")
            for i in range(40)]
    expected = [str(r.request_id) for r in sorted(made, key=lambda r: (r.created_at, r.pk), reverse=True)
                if r.requested_model == "rare"]
    pages, responses, query = [], [], "model=rare"
    while query:
        response = alice.get("/dashboard/acme/requests/?" + query)
        pages.append(ids(response))
        responses.append(response)
        query = _links(response, "older")
    assert sum(pages, []) == expected and len(pages) > len(expected) // 2
    assert any(b"data-searched-to" in r.content for r in responses)
    assert all(len(page) <= 2 for page in pages)
    # And back, newer link by newer link, from the last page (the oldest record is a match): the same rows.
    assert pages[-1] == expected[-1:]
    back, response = [], responses[-1]
    while query := _links(response, "newer"):
        response = alice.get("/dashboard/acme/requests/?" + query)
        back.append(ids(response))
    assert sum(back[::-1], []) + pages[-1] == expected


@pytest.mark.django_db(transaction=True)
async def test_the_csv_of_a_sparse_filter_goes_past_empty_stretches(monkeypatch):
    from requestlogs import selectors

    monkeypatch.setattr(selectors, "SCAN_STRETCHES", (2, 4))
    monkeypatch.setattr(selectors, "EXPORT_CHUNK", 3)
    acme, _, user = await sync_to_async(_export_data)()
    _, rows = await _csv_of(user, "/dashboard/acme/requests/export.csv?status=error")
    assert len(rows) == 3
    _, rows = await _csv_of(user, "/dashboard/acme/requests/export.csv?min_latency=1&status=ok")
    assert len(rows) == 20 and len({row["request_id"] for row in rows}) == 20
