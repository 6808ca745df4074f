"""Feedback on responses: parsing a submission, writing it, reading it back.

A submission names a response (`response_id`, the `id` of a chat completion or the `response_id`
of a WebSocket `chat.done`) or a conversation (`conversation_id`, for conversation metrics), and
carries any of: a thumb (`rating`), a 1-5 `score`, a `correction`, `tags`, a `comment`,
`metadata` and named `metrics` the tenant declared. Per (response, source) there is one row; a
second submission from the same source updates the fields it names and keeps the others, so
sending the same body twice leaves the same state.

Responses and conversations are looked up among the calling tenant's own records only: another
tenant's id gets the same 404 as an id that never existed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from django.db import transaction

from accounting.models import UsageRecord
from feedback.models import Feedback, FeedbackMetric, MetricValue
from kernel.errors import InvalidRequest, NotFound

DEFAULT_SOURCE = "api"
SOURCE_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,32}$")
THUMBS = {1: 1, -1: -1, "up": 1, "down": -1, "thumbs_up": 1, "thumbs_down": -1}
SCORES = range(1, 6)
MAX_COMMENT_CHARS = 10_000
MAX_CORRECTION_CHARS = 100_000
MAX_TAGS, MAX_TAG_CHARS = 20, 64
MAX_METADATA_KEYS, MAX_METADATA_BYTES = 32, 16_384
MAX_METRICS = 32
RESPONSE_ID_MAX = 100
CONVERSATION_ID_MAX = 200
FEEDBACK_FIELDS = ("rating", "score", "correction", "tags", "comment", "metadata")


@dataclass
class Submission:
    """A validated feedback body: only the fields the client sent are in `changes`."""

    source: str
    response_id: str = ""
    conversation_id: str = ""
    changes: dict = field(default_factory=dict)
    metrics: dict[str, object] = field(default_factory=dict)


def rating_value(*, rating: int | None, score: int | None) -> float | None:
    """One 0..1 scale for averaging: a score wins over a thumb when both were given."""
    if score is not None:
        return (score - 1) / 4
    if rating is not None:
        return 1.0 if rating > 0 else 0.0
    return None


def submission_parse(body: object, *, default_source: str = DEFAULT_SOURCE) -> Submission:
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    unknown = sorted(set(body) - {"response_id", "conversation_id", "source", "metrics", *FEEDBACK_FIELDS})
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0]}'.", param=unknown[0], code="unknown_field")
    source = body.get("source", default_source)
    if not isinstance(source, str) or not SOURCE_PATTERN.match(source):
        raise InvalidRequest(
            "'source' must be 1 to 32 letters, digits or '_.:-' (e.g. 'app' or 'reviewer:alice').",
            param="source",
        )
    submission = Submission(
        source=source,
        response_id=_id(body, "response_id", RESPONSE_ID_MAX),
        conversation_id=_id(body, "conversation_id", CONVERSATION_ID_MAX),
    )
    if not submission.response_id and not submission.conversation_id:
        raise InvalidRequest("Name the response ('response_id') or the conversation ('conversation_id').",
                             param="response_id")
    for name in FEEDBACK_FIELDS:
        if name in body:
            submission.changes[name] = _FIELD_PARSERS[name](body[name])
    if "metrics" in body:
        metrics = body["metrics"]
        if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
            raise InvalidRequest(f"'metrics' must be an object of at most {MAX_METRICS} named values.",
                                 param="metrics")
        submission.metrics = dict(metrics)
    if submission.changes and not submission.response_id:
        raise InvalidRequest("A rating, score, correction, tags, comment or metadata needs a 'response_id'.",
                             param="response_id")
    if not submission.changes and not submission.metrics:
        raise InvalidRequest(
            "Send at least one of: rating, score, correction, tags, comment, metadata, metrics.", param="rating"
        )
    return submission


def _id(body: dict, name: str, limit: int) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidRequest(f"'{name}' must be a non-empty string of at most {limit} characters.", param=name)
    return value


def _rating(value: object) -> int | None:
    # bool is an int in Python (True == 1): a JSON `true` must not count as a thumb up.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value not in THUMBS:
        raise InvalidRequest("'rating' must be 1 or \"up\" (good), -1 or \"down\" (bad), or null.", param="rating")
    return THUMBS[value]


def _score(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in SCORES:
        raise InvalidRequest("'score' must be an integer from 1 (worst) to 5 (best), or null.", param="score")
    return value


def _text(name: str, limit: int):
    def parse(value: object) -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > limit:
            raise InvalidRequest(f"'{name}' must be a string of at most {limit} characters.", param=name)
        return value

    return parse


def _tags(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TAGS or not all(
        isinstance(tag, str) and 0 < len(tag) <= MAX_TAG_CHARS for tag in value
    ):
        raise InvalidRequest(
            f"'tags' must be a list of at most {MAX_TAGS} strings of 1 to {MAX_TAG_CHARS} characters.", param="tags"
        )
    return sorted(set(value))


def _metadata(value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS or (
        len(json.dumps(value, ensure_ascii=False).encode()) > MAX_METADATA_BYTES
    ):
        raise InvalidRequest(
            f"'metadata' must be an object of at most {MAX_METADATA_KEYS} keys and {MAX_METADATA_BYTES} bytes.",
            param="metadata",
        )
    return value


_FIELD_PARSERS = {
    "rating": _rating,
    "score": _score,
    "correction": _text("correction", MAX_CORRECTION_CHARS),
    "comment": _text("comment", MAX_COMMENT_CHARS),
    "tags": _tags,
    "metadata": _metadata,
}


def _metric_value(metric: FeedbackMetric, value: object) -> float:
    param = f"metrics.{metric.name}"
    if metric.kind == FeedbackMetric.Kind.BOOLEAN:
        if not isinstance(value, bool):
            raise InvalidRequest(f"The metric '{metric.name}' takes true or false.", param=param)
        return 1.0 if value else 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"The metric '{metric.name}' takes a number.", param=param)
    if (metric.min_value is not None and value < metric.min_value) or (
        metric.max_value is not None and value > metric.max_value
    ):
        raise InvalidRequest(
            f"The metric '{metric.name}' takes values from {metric.min_value} to {metric.max_value}.", param=param
        )
    return float(value)


def _metrics_resolve(tenant_id: int, metrics: dict) -> list[tuple[FeedbackMetric, float]]:
    declared = {m.name: m for m in FeedbackMetric.objects.filter(tenant_id=tenant_id, name__in=list(metrics))}
    resolved = []
    for name, value in sorted(metrics.items()):
        metric = declared.get(name)
        if metric is None:
            raise InvalidRequest(
                f"Unknown metric '{name}': declare it for the tenant first.", param=f"metrics.{name}",
                code="unknown_metric",
            )
        resolved.append((metric, _metric_value(metric, value)))
    return resolved


def _record(tenant_id: int, response_id: str) -> UsageRecord:
    record = UsageRecord.objects.filter(tenant_id=tenant_id, response_id=response_id).exclude(response_id="").first()
    if record is None:
        raise NotFound("No response with that id.", param="response_id", code="response_not_found")
    return record


def _conversation_known(tenant_id: int, conversation_id: str) -> None:
    if not UsageRecord.objects.filter(tenant_id=tenant_id, conversation_id=conversation_id).exists():
        raise NotFound("No conversation with that id.", param="conversation_id", code="conversation_not_found")


@transaction.atomic
def feedback_submit(*, tenant_id: int, submission: Submission) -> tuple[dict, bool]:
    """Write a submission for the calling tenant; returns (the feedback as read back, created)."""
    record = _record(tenant_id, submission.response_id) if submission.response_id else None
    conversation = submission.conversation_id or (record.conversation_id if record else "")
    if record is None:
        _conversation_known(tenant_id, conversation)
    elif submission.conversation_id and submission.conversation_id != record.conversation_id:
        raise InvalidRequest("That response does not belong to that conversation.", param="conversation_id")
    metrics = _metrics_resolve(tenant_id, submission.metrics)
    created = False
    if record is not None and (submission.changes or any(m.scope == "response" for m, _ in metrics)):
        feedback = Feedback.objects.select_for_update().filter(usage_record=record, source=submission.source).first()
        created = feedback is None
        if created:
            feedback = Feedback(tenant_id=tenant_id, usage_record=record, response_id=record.response_id,
                                source=submission.source)
        for name, value in submission.changes.items():
            setattr(feedback, name, value)
        feedback.rating_value = rating_value(rating=feedback.rating, score=feedback.score)
        feedback.save()
    for metric, value in metrics:
        if metric.scope == FeedbackMetric.Scope.RESPONSE:
            if record is None:
                raise InvalidRequest(f"The metric '{metric.name}' is per response: send a 'response_id'.",
                                     param=f"metrics.{metric.name}")
            MetricValue.objects.update_or_create(
                metric=metric, source=submission.source, usage_record=record,
                defaults={"tenant_id": tenant_id, "value": value},
            )
        else:
            if not conversation:
                raise InvalidRequest(
                    f"The metric '{metric.name}' is per conversation, and this response has no conversation id.",
                    param=f"metrics.{metric.name}",
                )
            created = created or not MetricValue.objects.filter(
                metric=metric, source=submission.source, usage_record=None, conversation_id=conversation
            ).exists()
            MetricValue.objects.update_or_create(
                metric=metric, source=submission.source, usage_record=None, conversation_id=conversation,
                defaults={"tenant_id": tenant_id, "value": value},
            )
    if record is not None:
        return _read(tenant_id=tenant_id, record=record, source=submission.source), created
    return _conversation_read(tenant_id=tenant_id, conversation_id=conversation, source=submission.source), created


def feedback_upsert(*, tenant_id: int, response_id: str, rating: int | None, source: str = "playground"):
    """A thumb from the playground: `feedback_submit` with one field; returns (Feedback, created)."""
    submission = submission_parse({"response_id": response_id, "rating": rating}, default_source=source)
    if submission.changes["rating"] is None:
        raise InvalidRequest("'rating' must be 1 (good) or -1 (bad).", param="rating")
    _, created = feedback_submit(tenant_id=tenant_id, submission=submission)
    return Feedback.objects.get(tenant_id=tenant_id, response_id=response_id, source=source), created


def _metric_out(metric: FeedbackMetric, value: float):
    return bool(value) if metric.kind == FeedbackMetric.Kind.BOOLEAN else value


def _feedback_out(feedback: Feedback | None, *, record: UsageRecord, source: str, metrics: dict) -> dict:
    return {
        "object": "feedback",
        "response_id": record.response_id,
        "conversation_id": record.conversation_id or None,
        "source": source,
        "rating": feedback.rating if feedback else None,
        "score": feedback.score if feedback else None,
        "correction": feedback.correction if feedback else "",
        "tags": feedback.tags if feedback else [],
        "comment": feedback.comment if feedback else "",
        "metadata": feedback.metadata if feedback else {},
        "metrics": metrics,
        "created_at": feedback.created_at.isoformat() if feedback else None,
        "updated_at": feedback.updated_at.isoformat() if feedback else None,
    }


def _read(*, tenant_id: int, record: UsageRecord, source: str | None = None) -> dict | list[dict]:
    """Feedback on one response: one source's entry (`source`), or every source's as a list."""
    rows = {f.source: f for f in Feedback.objects.filter(usage_record=record)}
    metrics: dict[str, dict] = {}
    values = MetricValue.objects.filter(tenant_id=tenant_id).select_related("metric")
    for value in values.filter(usage_record=record):
        metrics.setdefault(value.source, {})[value.metric.name] = _metric_out(value.metric, value.value)
    if record.conversation_id:
        for value in values.filter(usage_record=None, conversation_id=record.conversation_id):
            metrics.setdefault(value.source, {})[value.metric.name] = _metric_out(value.metric, value.value)
    if source is not None:
        return _feedback_out(rows.get(source), record=record, source=source, metrics=metrics.get(source, {}))
    return [
        _feedback_out(rows.get(name), record=record, source=name, metrics=metrics.get(name, {}))
        for name in sorted(set(rows) | set(metrics))
    ]


def _conversation_read(*, tenant_id: int, conversation_id: str, source: str | None = None) -> dict:
    values = MetricValue.objects.filter(
        tenant_id=tenant_id, usage_record=None, conversation_id=conversation_id
    ).select_related("metric")
    by_source: dict[str, dict] = {}
    for value in values:
        if source is None or value.source == source:
            by_source.setdefault(value.source, {})[value.metric.name] = _metric_out(value.metric, value.value)
    if source is not None:
        return {"object": "conversation.feedback", "conversation_id": conversation_id, "source": source,
                "metrics": by_source.get(source, {})}
    return {"object": "conversation.feedback", "conversation_id": conversation_id,
            "metrics_by_source": by_source}


def feedback_read(*, tenant_id: int, response_id: str = "", conversation_id: str = "") -> dict:
    """`GET /v1/feedback`: every source's feedback on a response, or on a conversation's responses."""
    if response_id:
        record = _record(tenant_id, response_id)
        return {"object": "list", "data": _read(tenant_id=tenant_id, record=record)}
    _conversation_known(tenant_id, conversation_id)
    records = UsageRecord.objects.filter(tenant_id=tenant_id, conversation_id=conversation_id).exclude(
        response_id=""
    ).order_by("created_at", "pk")
    data = [entry for record in records for entry in _read(tenant_id=tenant_id, record=record)]
    return {"object": "list", "data": data,
            "conversation": _conversation_read(tenant_id=tenant_id, conversation_id=conversation_id)}
