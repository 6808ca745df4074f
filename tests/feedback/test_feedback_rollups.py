"""Feedback rollups equal what the raw rows give, converge when rerun, and follow late updates."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest

from accounting.models import UsageRecord
from accounting.services import tenant_create
from feedback.models import Feedback, FeedbackMetric, FeedbackRollup, MetricValue
from feedback.rollups import feedback_rollup_bucket, feedback_rollup_recent
from feedback.services import feedback_submit, submission_parse

pytestmark = pytest.mark.django_db(transaction=True)
UTC = dt_timezone.utc
DAY = datetime(2026, 3, 1, tzinfo=UTC)


def _record(tenant, n, *, model, route="", tags=(), conversation="", experiment="", variant="", hours=9):
    return UsageRecord.objects.create(
        tenant=tenant, created_at=DAY + timedelta(hours=hours, minutes=n), endpoint="chat.completions",
        requested_model=model, route=route, tags=list(tags), conversation_id=conversation, status="success",
        response_id=f"chatcmpl-{tenant.slug}-{n}", cost_usd=Decimal("0.001"), experiment=experiment,
        variant=variant,
    )


def _submit(tenant, body):
    return feedback_submit(tenant_id=tenant.pk, submission=submission_parse(body))


@pytest.fixture
def seeded():
    acme, globex = tenant_create(slug="acme"), tenant_create(slug="globex")
    FeedbackMetric.objects.create(tenant=acme, name="helpful", kind="float")
    FeedbackMetric.objects.create(tenant=acme, name="resolved", kind="boolean", scope="conversation")
    ratings = [("up", None), ("down", None), (None, 5), ("up", 3), (None, 1), ("down", None)]
    for n, (rating, score) in enumerate(ratings):
        model = "gpt-4o" if n % 2 else "gpt-4o-mini"
        _record(acme, n, model=model, route="smart" if n < 4 else "", tags=["support"] if n % 3 == 0 else [],
                conversation="c1" if n < 2 else "", experiment="exp" if n < 4 else "",
                variant="a" if n % 2 else "b", hours=9 + n % 2)
        body = {"response_id": f"chatcmpl-acme-{n}", "metrics": {"helpful": n / 10}}
        if rating:
            body["rating"] = rating
        if score:
            body["score"] = score
        if n == 1:
            body["correction"] = "Better answer"
            body["tags"] = ["wrong"]
        _submit(acme, body)
    _submit(acme, {"conversation_id": "c1", "metrics": {"resolved": True}})
    _record(globex, 0, model="gpt-4o", hours=9)
    _submit(globex, {"response_id": "chatcmpl-globex-0", "rating": "up"})
    return acme, globex


def _expected(tenant_id: int, dimension: str, value: str, start, end) -> dict:
    """Straight from the raw rows, without the rollup code."""
    def matches(record) -> bool:
        return {
            "total": True,
            "model": record.requested_model == value,
            "route": record.route == value,
            "tag": value in record.tags,
            "variant": f"{record.experiment}/{record.variant}" == value and bool(record.experiment),
        }[dimension]

    records = [r for r in UsageRecord.objects.filter(tenant_id=tenant_id, created_at__gte=start, created_at__lt=end)
               if matches(r)]
    feedback = list(Feedback.objects.filter(usage_record__in=records))
    values = [f.rating_value for f in feedback if f.rating_value is not None]
    metrics: dict = {}
    for mv in MetricValue.objects.filter(usage_record__in=records).select_related("metric"):
        metrics.setdefault(mv.metric.name, []).append(mv.value)
    for mv in MetricValue.objects.filter(tenant_id=tenant_id, usage_record=None).select_related("metric"):
        latest = UsageRecord.objects.filter(tenant_id=tenant_id, conversation_id=mv.conversation_id).latest("created_at")
        if latest in records:
            metrics.setdefault(mv.metric.name, []).append(mv.value)
    return {
        "feedback": len(feedback), "ratings": len(values), "rating_sum": pytest.approx(sum(values)),
        "thumbs_up": sum(f.rating == 1 for f in feedback), "thumbs_down": sum(f.rating == -1 for f in feedback),
        "corrections": sum(bool(f.correction) for f in feedback),
        "metrics": {name: {"count": len(v), "sum": pytest.approx(sum(v)), "sumsq": pytest.approx(sum(x * x for x in v))}
                    for name, v in metrics.items()},
    }


def test_rollups_equal_the_raw_rows_and_converge(seeded):
    acme, globex = seeded
    for _ in range(2):  # a rerun converges on the same rows
        feedback_rollup_bucket(granularity="day", bucket_start=DAY)
        for hour in (9, 10):
            feedback_rollup_bucket(granularity="hour", bucket_start=DAY + timedelta(hours=hour))
    rows = FeedbackRollup.objects.filter(granularity="day", bucket_start=DAY)
    keys = set(rows.values_list("tenant_id", "dimension", "value"))
    assert keys == {
        (acme.pk, "total", ""), (acme.pk, "model", "gpt-4o"), (acme.pk, "model", "gpt-4o-mini"),
        (acme.pk, "route", "smart"), (acme.pk, "tag", "support"), (acme.pk, "variant", "exp/a"),
        (acme.pk, "variant", "exp/b"), (globex.pk, "total", ""), (globex.pk, "model", "gpt-4o"),
    }
    for row in FeedbackRollup.objects.all():
        start = row.bucket_start
        end = start + (timedelta(days=1) if row.granularity == "day" else timedelta(hours=1))
        expected = _expected(row.tenant_id, row.dimension, row.value, start, end)
        actual = {name: getattr(row, name) for name in expected}
        assert actual == expected, (row.granularity, row.dimension, row.value)
    total = rows.get(tenant=acme, dimension="total")
    assert (total.feedback, total.thumbs_up, total.thumbs_down, total.corrections) == (6, 2, 2, 1)
    assert total.feedback_tags == {"wrong": 1}
    assert total.metrics["resolved"]["count"] == 1


def test_recent_run_follows_a_late_update_of_an_old_rating(seeded):
    acme, _ = seeded
    feedback_rollup_recent(now=DAY + timedelta(days=30))  # first run: every bucket with feedback
    total = FeedbackRollup.objects.get(granularity="day", bucket_start=DAY, tenant=acme, dimension="total")
    assert (total.thumbs_up, total.thumbs_down) == (2, 2)

    _submit(acme, {"response_id": "chatcmpl-acme-1", "rating": "up"})  # a month later
    feedback_rollup_recent(now=DAY + timedelta(days=30, minutes=1))
    total.refresh_from_db()
    assert (total.thumbs_up, total.thumbs_down) == (3, 1)
    hour = FeedbackRollup.objects.get(granularity="hour", bucket_start=DAY + timedelta(hours=10), tenant=acme,
                                      dimension="total")
    assert hour.thumbs_up == _expected(acme.pk, "total", "", hour.bucket_start,
                                       hour.bucket_start + timedelta(hours=1))["thumbs_up"]


def _rows() -> dict:
    return {
        (r.granularity, r.bucket_start, r.tenant_id, r.dimension, r.value): {
            "feedback": r.feedback, "ratings": r.ratings, "rating_sum": pytest.approx(r.rating_sum),
            "rating_sumsq": pytest.approx(r.rating_sumsq), "thumbs_up": r.thumbs_up, "thumbs_down": r.thumbs_down,
            "corrections": r.corrections, "feedback_tags": r.feedback_tags,
            "metrics": {name: {"count": m["count"], "sum": pytest.approx(m["sum"]), "sumsq": pytest.approx(m["sumsq"])}
                        for name, m in r.metrics.items()},
        }
        for r in FeedbackRollup.objects.all()
    }


def test_incremental_runs_equal_a_recompute_on_randomised_feedback():
    """Ratings given, changed and moved; conversation metrics that move when their conversation
    gets a later request: runs in between, then every bucket recomputed from raw rows."""
    import random

    rng = random.Random(30)
    acme = tenant_create(slug="acme")
    FeedbackMetric.objects.create(tenant=acme, name="helpful", kind="float")
    FeedbackMetric.objects.create(tenant=acme, name="resolved", kind="boolean", scope="conversation")
    now, n = DAY + timedelta(days=2), 0
    for step in range(5):
        for _ in range(rng.randint(4, 10)):
            hours = rng.choice([rng.randint(0, 47), 48 + step])  # late ones, and the current hour
            _record(acme, n, model=rng.choice(["m1", "m2"]), route=rng.choice(["", "r"]),
                    tags=rng.choice([[], ["t"]]), conversation=rng.choice(["", "c1", "c2", "c3"]),
                    experiment=rng.choice(["", "exp"]), variant=rng.choice(["a", "b"]), hours=hours)
            n += 1
        for m in rng.sample(range(n), k=min(n, 6)):  # new feedback, or a change of earlier feedback
            body = {"response_id": f"chatcmpl-acme-{m}", "source": rng.choice(["app", "judge"]),
                    rng.choice(["rating", "score"]): None, "metrics": {"helpful": rng.random()}}
            body.pop("rating", None), body.pop("score", None)
            if rng.random() < 0.5:
                body["rating"] = rng.choice(["up", "down"])
            else:
                body["score"] = rng.randint(1, 5)
            if rng.random() < 0.3:
                body["correction"], body["tags"] = "better", [rng.choice(["wrong", "slow"])]
            _submit(acme, body)
        for conversation in rng.sample(["c1", "c2", "c3"], k=2):
            if UsageRecord.objects.filter(conversation_id=conversation).exists():
                _submit(acme, {"conversation_id": conversation, "metrics": {"resolved": rng.random() < 0.5}})
        report = feedback_rollup_recent(now=now)
        assert report.records_read > 0
        now += timedelta(minutes=1)
    incremental = _rows()
    assert any(key[3] == "variant" for key in incremental) and incremental
    buckets = {(g, start) for g, start, *_ in incremental}
    FeedbackRollup.objects.all().delete()
    for granularity, start in sorted(buckets):
        feedback_rollup_bucket(granularity=granularity, bucket_start=start)
    recomputed = _rows()
    assert set(recomputed) == set(incremental)
    for key, row in recomputed.items():
        for name, value in row.items():
            assert value == incremental[key][name], (key, name)
