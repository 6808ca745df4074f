"""Feedback dashboards: per tenant and across tenants, worst-rated responses, corrections as JSONL."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from accounting.models import UsageContent, UsageRecord
from accounting.rollups import rollup_recent
from accounting.services import tenant_create
from feedback.models import FeedbackMetric
from feedback.rollups import feedback_rollup_recent
from feedback.services import feedback_submit, submission_parse
from tests.conftest import logged_in_client

pytestmark = pytest.mark.django_db(transaction=True)


def _client(django_user_model, name: str, *, tenant=None, staff=False, group=None):
    return logged_in_client(name, staff=staff, group=group, tenant=tenant)


def _answered(tenant, n: int, *, model: str, route: str = "", prompt: str = "", answer: str = ""):
    record = UsageRecord.objects.create(
        tenant=tenant, created_at=timezone.now() - timedelta(hours=1, minutes=n), endpoint="chat.completions",
        requested_model=model, route=route, status="success", response_id=f"chatcmpl-{tenant.slug}-{n}",
        cost_usd=Decimal("0.002"), latency_ms=100 + n,
    )
    if tenant.keep_content:
        UsageContent.objects.create(usage_record=record, tenant=tenant, created_at=record.created_at,
                                    messages=[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": prompt}], completion=answer)
    return record


def _rate(tenant, record, **fields):
    feedback_submit(tenant_id=tenant.pk, submission=submission_parse({"response_id": record.response_id, **fields}))


@pytest.fixture
def seeded():
    acme = tenant_create(slug="acme")
    acme.keep_content = True
    acme.save()
    globex = tenant_create(slug="globex")
    FeedbackMetric.objects.create(tenant=acme, name="helpful", kind="float")
    _rate(acme, _answered(acme, 0, model="gpt-4o", route="smart", prompt="What is 2+2?", answer="5"),
          rating="down", correction="4", metrics={"helpful": 0.0}, tags=["wrong", "math"])
    _rate(acme, _answered(acme, 1, model="gpt-4o", route="smart", prompt="Capital of France?", answer="Paris"),
          rating="up", metrics={"helpful": 1.0}, tags=["wrong"])
    _rate(acme, _answered(acme, 2, model="gpt-4o-mini", prompt="Hi", answer="Hello"), score=4)
    _rate(globex, _answered(globex, 0, model="claude", prompt="secret plan", answer="globex answer"),
          rating="down", correction="globex correction")
    rollup_recent()
    feedback_rollup_recent()
    return acme, globex


def _row(html: str, table: str, value: str) -> str:
    section = html.split(f'data-table="{table}"', 1)[1].split("</table>", 1)[0]
    return re.search(rf'<tr data-value="{re.escape(value)}">(.*?)</tr>', section, re.S).group(1)


def test_member_sees_ratings_by_model_and_route_next_to_cost(seeded, django_user_model):
    acme, _ = seeded
    client = _client(django_user_model, "alice", tenant=acme)
    response = client.get("/dashboard/acme/feedback/?range=24h")
    assert response.status_code == 200
    html = response.content.decode()
    gpt4o = _row(html, "model", "gpt-4o")
    assert '<td class="mean-rating">0.500</td>' in gpt4o and "$0.002000" in gpt4o
    assert '<td class="mean-rating">0.750</td>' in _row(html, "model", "gpt-4o-mini")
    assert '<td class="mean-rating">0.500</td>' in _row(html, "route", "smart")
    assert "helpful" in html and '<svg' in html
    # The worst-rated list shows the kept prompt and answer with the correction; no other tenant.
    worst = html.split('data-table="worst"', 1)[1]
    assert "What is 2+2?" in worst and "globex" not in worst and "secret plan" not in html
    first = re.search(r'<tr data-response="([^"]+)"', worst).group(1)
    assert first in ("chatcmpl-acme-0",)


def test_member_cannot_open_another_tenants_feedback_or_the_operator_view(seeded, django_user_model):
    acme, _ = seeded
    client = _client(django_user_model, "alice", tenant=acme)
    for url in ("/dashboard/globex/feedback/", "/dashboard/globex/feedback/corrections.jsonl",
                "/dashboard/nobody/feedback/"):
        assert client.get(url).status_code == 404, url
    assert client.get("/dashboard/feedback/").status_code == 403
    assert client.get("/dashboard/feedback/corrections.jsonl").status_code == 403
    assert Client().get("/dashboard/acme/feedback/").status_code == 302  # to the login page


def test_corrections_export_in_chat_fine_tuning_format(seeded, django_user_model):
    acme, _ = seeded
    client = _client(django_user_model, "alice", tenant=acme)
    response = client.get("/dashboard/acme/feedback/corrections.jsonl?range=24h")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/jsonl")
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert lines == [{"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]}]


def test_operator_sees_every_tenant_but_content_only_where_kept(seeded, django_user_model):
    client = _client(django_user_model, "olga", staff=True, group="Gateway viewers")
    html = client.get("/dashboard/feedback/?range=24h").content.decode()
    tenants = html.split('data-table="tenants"', 1)[1].split("</table>", 1)[0]
    assert "acme" in tenants and "globex" in tenants
    worst = html.split('data-table="worst"', 1)[1]
    assert "globex correction" in worst and "secret plan" not in worst and "not kept" in worst
    lines = b"".join(client.get("/dashboard/feedback/corrections.jsonl?range=24h").streaming_content).splitlines()
    assert len(lines) == 1  # globex kept no prompt: its correction is no training example
    assert client.get("/dashboard/globex/feedback/").status_code == 200


def test_charts_are_titled_with_axes_and_legends_and_tags_are_broken_down(seeded, django_user_model):
    acme, _ = seeded
    html = _client(django_user_model, "alice", tenant=acme).get("/dashboard/acme/feedback/?range=24h").content.decode()
    charts = re.findall(r'<svg[^>]*data-chart="([^"]+)".*?</svg>', html, re.S)
    assert charts == ["rating-by-model", "rating-by-route", "metrics", "feedback-tags"]
    for svg in re.findall(r'<svg[^>]*data-chart=.*?</svg>', html, re.S):
        assert '<text class="chart-title"' in svg and 'class="axis-title x"' in svg and 'class="axis-title y"' in svg
        assert 'class="legend-item"' in svg
    assert re.search(r'<text class="chart-title"[^>]*>Mean rating by model</text>', html)
    # Tags sent with feedback: 2 of the tenant's 3 feedback carried "wrong", 1 "math".
    assert re.sub(r"\s+", "", _row(html, "feedback-tags", "wrong")) == "<td>wrong</td><td>2</td><td>67%</td>"
    assert "<td>1</td>" in _row(html, "feedback-tags", "math")
    tags_chart = html.split('data-chart="feedback-tags"', 1)[1].split("</svg>", 1)[0]
    assert '>wrong</text>' in tags_chart and '>math</text>' in tags_chart
    # The thumbs are drawn, not emoji a machine without an emoji font shows as empty boxes.
    assert "\U0001f44d" not in html and "\U0001f44e" not in html
    assert 'aria-label="Thumbs up"' in html and 'aria-label="Thumbs down"' in html
