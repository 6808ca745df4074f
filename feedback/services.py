"""Writes of feedback on responses."""

from __future__ import annotations

from django.db import transaction

from accounting.models import UsageRecord
from feedback.models import Feedback
from gateway_site.errors import InvalidRequest, NotFound

RATINGS = (1, -1)
MAX_COMMENT_CHARS = 10_000


@transaction.atomic
def feedback_upsert(
    *, tenant_id: int, response_id: str, rating: int | None, source: str = "playground", comment: str = ""
) -> tuple[Feedback, bool]:
    """Record a tenant's rating of one of its responses; returns (feedback, created).

    A response is found only among the tenant's own usage records: another tenant's response id
    gets the same `NotFound` as an id that never existed, so the answer tells nothing about it.
    """
    # bool is an int in Python (True == 1): a JSON `true` must not count as a thumbs-up.
    if isinstance(rating, bool) or rating not in RATINGS:
        raise InvalidRequest("'rating' must be 1 (good) or -1 (bad).", param="rating")
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidRequest(f"'comment' is longer than {MAX_COMMENT_CHARS} characters.", param="comment")
    record = (
        UsageRecord.objects.filter(tenant_id=tenant_id, response_id=response_id).exclude(response_id="").first()
        if isinstance(response_id, str)
        else None
    )
    if record is None:
        raise NotFound("No response with that id.", param="response_id", code="response_not_found")
    return Feedback.objects.update_or_create(
        usage_record=record,
        source=source,
        defaults={"tenant_id": tenant_id, "response_id": response_id, "rating": rating, "comment": comment},
    )
