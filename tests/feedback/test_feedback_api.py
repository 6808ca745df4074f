"""POST/GET /v1/feedback in process against real completions from the fake provider."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from tests.asgi_client import ApiClient
from django.utils import timezone

from accounting.models import Tenant, UsageContent, UsageRecord
from accounting.services import api_key_create, content_retention_enforce, tenant_create
from feedback.models import Feedback, FeedbackMetric, MetricValue

pytestmark = pytest.mark.django_db(transaction=True)


async def complete(gateway, content: str = "Hello there", **headers) -> dict:
    response = await ApiClient().post(
        "/v1/chat/completions",
        json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}),
        content_type="application/json", headers={**gateway.auth, **headers},
    )
    assert response.status_code == 200, response.content
    return response.json()


async def send(auth: dict, body, *, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body)
    return await ApiClient().post("/v1/feedback", data, content_type="application/json", headers=auth)


async def read(auth: dict, **params):
    return await ApiClient().get("/v1/feedback", params, headers=auth)


@pytest.fixture
def globex(gateway) -> dict:
    tenant = tenant_create(slug="globex")
    _, raw = api_key_create(tenant=tenant)
    return {"Authorization": f"Bearer {raw}"}


async def test_thumb_on_a_completion_is_stored_and_read_back(gateway):
    completion = await complete(gateway)
    response = await send(gateway.auth, {"response_id": completion["id"], "rating": "up"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["object"] == "feedback" and body["response_id"] == completion["id"]
    assert (body["source"], body["rating"], body["score"]) == ("api", 1, None)

    listed = (await read(gateway.auth, response_id=completion["id"])).json()
    assert listed["object"] == "list" and [entry["rating"] for entry in listed["data"]] == [1]
    feedback = await Feedback.objects.aget()
    record = await UsageRecord.objects.aget()
    assert feedback.usage_record_id == record.pk and feedback.rating_value == 1.0


async def test_an_update_from_the_same_source_merges_and_repeating_it_changes_nothing(gateway):
    completion = await complete(gateway)
    first = {"response_id": completion["id"], "source": "reviewer", "rating": -1, "tags": ["too_long"]}
    assert (await send(gateway.auth, first)).status_code == 201
    update = {"response_id": completion["id"], "source": "reviewer", "score": 2,
              "correction": "Hi.", "comment": "Keep it short", "metadata": {"ticket": "T-1"}}
    for _ in range(2):
        response = await send(gateway.auth, update)
        assert response.status_code == 200
    body = response.json()
    assert body["rating"] == -1 and body["tags"] == ["too_long"]  # kept from the first submission
    assert (body["score"], body["correction"], body["comment"], body["metadata"]) == (
        2, "Hi.", "Keep it short", {"ticket": "T-1"}
    )
    assert await Feedback.objects.acount() == 1
    assert (await Feedback.objects.aget()).rating_value == 0.25  # the score wins over the thumb

    # Another source is another row; null clears a field.
    assert (await send(gateway.auth, {"response_id": completion["id"], "source": "app", "rating": 1})).status_code == 201
    cleared = await send(gateway.auth, {"response_id": completion["id"], "source": "reviewer", "score": None})
    assert cleared.json()["score"] is None
    assert (await Feedback.objects.aget(source="reviewer")).rating_value == 0.0
    listed = (await read(gateway.auth, response_id=completion["id"])).json()["data"]
    assert [(entry["source"], entry["rating"]) for entry in listed] == [("app", 1), ("reviewer", -1)]


async def test_another_tenants_response_is_not_found_exactly_like_a_missing_one(gateway, globex):
    completion = await complete(gateway, **{"X-Gateway-Conversation-Id": "conv-acme"})
    await send(gateway.auth, {"response_id": completion["id"], "rating": 1})
    missing = await send(globex, {"response_id": "chatcmpl-doesnotexist", "rating": 1})
    foreign = await send(globex, {"response_id": completion["id"], "rating": -1})
    assert missing.status_code == foreign.status_code == 404
    assert missing.json() == foreign.json()
    assert foreign.json()["error"]["code"] == "response_not_found"

    assert (await read(globex, response_id=completion["id"])).status_code == 404
    assert (await read(globex, conversation_id="conv-acme")).status_code == 404
    metric_on_foreign = await send(globex, {"conversation_id": "conv-acme", "metrics": {"x": True}})
    assert metric_on_foreign.status_code == 404
    # Nothing of globex's attempts was written, and acme's feedback is untouched.
    assert [(f.tenant_id, f.rating) async for f in Feedback.objects.all()] == [(gateway.tenant.pk, 1)]


async def test_named_metrics_per_response_and_per_conversation(gateway):
    tenant = gateway.tenant
    await FeedbackMetric.objects.acreate(tenant=tenant, name="helpful", kind="float", min_value=0, max_value=1)
    await FeedbackMetric.objects.acreate(tenant=tenant, name="resolved", kind="boolean", scope="conversation")
    first = await complete(gateway, "Question one", **{"X-Gateway-Conversation-Id": "conv-7"})
    second = await complete(gateway, "Question two", **{"X-Gateway-Conversation-Id": "conv-7"})
    assert (await UsageRecord.objects.filter(conversation_id="conv-7").acount()) == 2

    response = await send(gateway.auth, {"response_id": first["id"], "metrics": {"helpful": 0.75}})
    assert response.status_code == 201 and response.json()["metrics"] == {"helpful": 0.75}
    # A conversation metric by conversation id alone, then read with any of its responses.
    response = await send(gateway.auth, {"conversation_id": "conv-7", "metrics": {"resolved": True}})
    assert response.status_code == 201
    assert response.json()["metrics"] == {"resolved": True}
    again = await send(gateway.auth, {"conversation_id": "conv-7", "metrics": {"resolved": True}})
    assert again.status_code == 200 and await MetricValue.objects.acount() == 2
    listed = (await read(gateway.auth, response_id=second["id"])).json()["data"]
    assert listed[0]["metrics"] == {"resolved": True}
    whole = (await read(gateway.auth, conversation_id="conv-7")).json()
    assert whole["conversation"]["metrics_by_source"] == {"api": {"resolved": True}}
    assert [entry["response_id"] for entry in whole["data"]] == [first["id"], second["id"]]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"rating": 1}, "response_id"),
        ({"response_id": "R", "rating": True}, "rating"),
        ({"response_id": "R", "rating": 2}, "rating"),
        ({"response_id": "R", "score": 6}, "score"),
        ({"response_id": "R", "score": 4.5}, "score"),
        ({"response_id": "R", "tags": ["x"] * 21}, "tags"),
        ({"response_id": "R", "tags": "x"}, "tags"),
        ({"response_id": "R", "metadata": [1]}, "metadata"),
        ({"response_id": "R", "comment": 5}, "comment"),
        ({"response_id": "R", "correction": "x" * 100_001}, "correction"),
        ({"response_id": "R", "source": "no spaces"}, "source"),
        ({"response_id": "R", "stars": 5}, "stars"),
        ({"response_id": "R"}, "rating"),
        ({"response_id": "R", "metrics": {"nope": 1}}, "metrics.nope"),
        ({"response_id": "R", "metrics": {"helpful": 2}}, "metrics.helpful"),
        ({"response_id": "R", "metrics": {"helpful": True}}, "metrics.helpful"),
        ({"response_id": "R", "metrics": {"resolved": 1}}, "metrics.resolved"),
        ({"response_id": "x" * 101, "rating": 1}, "response_id"),
        ([1, 2], None),
    ],
)
async def test_bad_feedback_gets_a_400_naming_the_field(gateway, body, param):
    tenant = gateway.tenant
    await FeedbackMetric.objects.acreate(tenant=tenant, name="helpful", kind="float", min_value=0, max_value=1)
    await FeedbackMetric.objects.acreate(tenant=tenant, name="resolved", kind="boolean")
    completion = await complete(gateway)
    if isinstance(body, dict) and body.get("response_id") == "R":
        body["response_id"] = completion["id"]
    response = await send(gateway.auth, body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert await Feedback.objects.acount() == 0 and await MetricValue.objects.acount() == 0


async def test_transport_errors(gateway):
    assert (await send(gateway.auth, None, raw=b"{not json")).json()["error"]["code"] == "invalid_json"
    assert (await send({}, {"response_id": "x", "rating": 1})).status_code == 401
    put = await ApiClient().put("/v1/feedback", "{}", content_type="application/json", headers=gateway.auth)
    assert put.status_code == 405 and put.json()["error"]["code"] == "method_not_allowed"
    assert (await read(gateway.auth)).status_code == 400
    assert (await read(gateway.auth, response_id="a", conversation_id="b")).status_code == 400


async def test_content_is_kept_only_for_tenants_that_opt_in_and_expires(gateway):
    await complete(gateway, "Not kept")
    assert await UsageContent.objects.acount() == 0

    tenant = await Tenant.objects.aget(pk=gateway.tenant.pk)
    tenant.keep_content, tenant.content_retention_days = True, 7
    await tenant.asave(update_fields=["keep_content", "content_retention_days"])
    completion = await complete(gateway, "Please keep this")
    content = await UsageContent.objects.select_related("usage_record").aget()
    assert content.usage_record.response_id == completion["id"]
    assert content.messages == [{"role": "user", "content": "Please keep this"}]
    assert content.completion == completion["choices"][0]["message"]["content"] != ""

    assert await sync_to_async(content_retention_enforce)(now=timezone.now() + timedelta(days=6)) == 0
    assert await sync_to_async(content_retention_enforce)(now=timezone.now() + timedelta(days=8)) == 1
    assert await UsageContent.objects.acount() == 0 and await UsageRecord.objects.acount() == 2
