"""The batch runner in process, against the fake provider, PostgreSQL and Redis: how the next
runner resumes the lines a dead worker left `running` (the e2e tests kill a real worker; here the
states it can leave are made exactly), and the input file's lines."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import orjson
import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile

from accounting.models import UsageRecord
from accounting.services import RecordWrite
from accounting.statements import insert_fields
from batches.formats import lines_parse
from batches.models import Batch, BatchLine
from batches.runner import batch_run
from batches.services import batch_create, file_create
from routing.journal import write_dumps

pytestmark = pytest.mark.django_db(transaction=True)


def chat_line(custom_id: str, text: str) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": text}]}}


def test_lines_parse_refuses_bad_lines_alone():
    data = b"\n".join([
        json.dumps(chat_line("a", "hi")).encode(), b"", b"[1, 2]", b"{oops",
        json.dumps({**chat_line("b", "hi"), "url": "/v1/embeddings"}).encode(),
        json.dumps({**chat_line("c", "hi"), "method": "GET"}).encode(),
        json.dumps(chat_line("a", "again")).encode(), json.dumps({**chat_line("", "x")}).encode(),
    ])
    lines = lines_parse(data, endpoint="/v1/chat/completions")
    assert [(line.index, line.custom_id, bool(line.error)) for line in lines] == [
        (1, "a", False), (3, "", True), (4, "", True), (5, "b", True), (6, "c", True), (7, "a", True), (8, "", True)]
    assert lines[0].body["messages"][0]["content"] == "hi"
    assert "not valid JSON" in lines[2].error and "'/v1/embeddings'" in lines[3].error
    assert "earlier line" in lines[5].error and "custom_id" in lines[6].error


@pytest.fixture
def batch_of(gateway, tmp_path, settings):
    settings.STORAGES = {**settings.STORAGES, "batches": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}

    def make(rows: list[dict]) -> Batch:
        upload = SimpleUploadedFile("batch.jsonl", b"\n".join(json.dumps(row).encode() for row in rows))
        file = file_create(tenant_id=gateway.tenant.pk, upload=upload, purpose="batch")
        return batch_create(tenant_id=gateway.tenant.pk, key_id=gateway.key.pk, file=file,
                            endpoint="/v1/chat/completions", metadata=None, estimate=Decimal("0"))

    return sync_to_async(make)


async def died_mid_line(batch: Batch, line: BatchLine, **line_state) -> None:
    """The batch as a worker killed while `line` was in flight leaves it."""
    await BatchLine.objects.filter(pk=line.pk).aupdate(state="running", ok=None, result=None, **line_state)
    await Batch.objects.filter(pk=batch.pk).aupdate(status="in_progress", completed=0, output_file=None,
                                                    completed_at=None, finalizing_at=None)


def answered(fake_provider_url: str, request_id) -> list[dict]:
    ledger = httpx.get(f"{fake_provider_url}/_fake/ledger", params={"request_id": str(request_id)}).json()["data"]
    return [entry for entry in ledger if entry["ended"] == "completed"]


async def test_a_line_that_kept_its_answer_is_recorded_once_and_finished_with_it(batch_of, fake_provider_url):
    batch = await batch_of([chat_line("a", "hello")])
    await batch_run(batch.pk, owner="first")
    line = await BatchLine.objects.aget(batch_id=batch.pk)
    record = await UsageRecord.objects.aget(request_id=line.request_id)
    answer = line.result["response"]["body"]
    # Killed after the keep, before its record was written.
    fields = {field.attname: getattr(record, field.attname) for field in insert_fields()}
    kept = {"write": orjson.loads(write_dumps(RecordWrite(fields={**fields, "content": None}))), "answer": answer}
    await record.adelete()
    await died_mid_line(batch, line, kept=kept)

    await batch_run(batch.pk, owner="second")
    done = await Batch.objects.aget(pk=batch.pk)
    assert (done.status, done.completed, done.failed) == ("completed", 1, 0)
    line = await BatchLine.objects.aget(pk=line.pk)
    assert line.attempt == 0 and line.kept is None and line.result["response"]["body"] == answer
    again = await UsageRecord.objects.aget(request_id=line.request_id)
    assert (again.cost_usd, again.prompt_tokens, again.completion_tokens) == (
        record.cost_usd, record.prompt_tokens, record.completion_tokens)
    assert len(answered(fake_provider_url, line.request_id)) == 1


async def test_a_line_that_kept_its_answer_after_its_record_was_written_is_not_recorded_twice(batch_of):
    batch = await batch_of([chat_line("a", "hello")])
    await batch_run(batch.pk, owner="first")
    line = await BatchLine.objects.aget(batch_id=batch.pk)
    record = await UsageRecord.objects.aget(request_id=line.request_id)
    fields = {field.attname: getattr(record, field.attname) for field in insert_fields()}
    kept = {"write": orjson.loads(write_dumps(RecordWrite(fields={**fields, "content": None}))),
            "answer": line.result["response"]["body"]}
    await died_mid_line(batch, line, kept=kept)  # killed after the record, before the finish

    await batch_run(batch.pk, owner="second")
    assert (await Batch.objects.aget(pk=batch.pk)).status == "completed"
    assert await UsageRecord.objects.filter(tenant_id=batch.tenant_id).acount() == 1


async def test_a_line_cut_before_its_answer_is_sent_again_under_a_new_request_id(batch_of, fake_provider_url):
    batch = await batch_of([chat_line("a", "hello")])
    await batch_run(batch.pk, owner="first")
    line = await BatchLine.objects.aget(batch_id=batch.pk)
    first = line.request_id
    await UsageRecord.objects.filter(request_id=first).adelete()  # as if never answered
    await died_mid_line(batch, line, kept=None)

    await batch_run(batch.pk, owner="second")
    line = await BatchLine.objects.aget(pk=line.pk)
    assert line.attempt == 1 and line.request_id != first and line.ok is True
    assert [r.request_id async for r in UsageRecord.objects.filter(tenant_id=batch.tenant_id)] == [line.request_id]
    assert len(answered(fake_provider_url, line.request_id)) == 1


async def test_a_runner_leaves_a_batch_another_holds(batch_of):
    from batches.services import lease_take

    batch = await batch_of([chat_line("a", "hello")])
    assert await sync_to_async(lease_take)(batch_id=batch.pk, owner="alive", seconds=60)
    await batch_run(batch.pk, owner="second")
    batch = await Batch.objects.aget(pk=batch.pk)
    assert batch.status == "validating" and batch.lease_owner == "alive"


def test_the_batches_dashboard_shows_a_tenants_batches_to_its_members_and_every_batch_to_operators(batch_of, gateway):
    from asgiref.sync import async_to_sync

    from accounting.services import tenant_create
    from tests.conftest import logged_in_client

    batch = async_to_sync(batch_of)([chat_line("a", "hello")])
    async_to_sync(batch_run)(batch.pk, owner="runner")
    member = logged_in_client("member", tenant=gateway.tenant)
    page = member.get(f"/dashboard/{gateway.tenant.slug}/batches/")
    assert page.status_code == 200
    text = page.content.decode()
    assert f'data-batch="{batch.pk}"' in text and "completed" in text
    other = tenant_create(slug="other")
    assert member.get(f"/dashboard/{other.slug}/batches/").status_code == 404
    assert member.get("/dashboard/batches/").status_code == 403
    viewer = logged_in_client("viewer", staff=True, group="Gateway viewers")
    assert f'data-batch="{batch.pk}"' in viewer.get("/dashboard/batches/").content.decode()


async def test_a_batch_past_its_window_expires_with_its_unsent_lines_in_the_error_file(batch_of):
    from datetime import timedelta

    from django.utils import timezone

    batch = await batch_of([chat_line("a", "hello"), chat_line("b", "world")])
    await Batch.objects.filter(pk=batch.pk).aupdate(expires_at=timezone.now() - timedelta(seconds=1))
    await batch_run(batch.pk, owner="runner")
    batch = await Batch.objects.aget(pk=batch.pk)
    assert (batch.status, batch.completed, batch.failed, batch.output_file_id) == ("expired", 0, 2, None)
    assert batch.expired_at is not None
    results = [line.result async for line in BatchLine.objects.filter(batch_id=batch.pk).order_by("index")]
    assert [(r["custom_id"], r["error"]["code"]) for r in results] == [("a", "batch_expired"), ("b", "batch_expired")]
    assert await UsageRecord.objects.filter(tenant_id=batch.tenant_id).acount() == 0
