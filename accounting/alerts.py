"""Sending budget alerts: a webhook per budget and an email, each outcome recorded on the alert."""

from __future__ import annotations

import logging

import httpx
from django.conf import settings
from django.core.mail import send_mail

from accounting.models import BudgetAlert
from kernel.upstream_urls import url_destination_problem

logger = logging.getLogger(__name__)
WEBHOOK_TIMEOUT_SECONDS = 5.0


def budget_alert_payload(alert: BudgetAlert) -> dict:
    budget = alert.budget
    return {
        "type": "budget.threshold",
        "tenant": budget.tenant.slug,
        "api_key": budget.api_key.prefix if budget.api_key_id else None,
        "period": budget.period,
        "period_start": alert.period_start.isoformat(),
        "threshold_percent": alert.threshold,
        "spent_usd": str(alert.spent_usd),
        "limit_usd": str(budget.amount_usd),
        "hard": budget.hard,
    }


def budget_alert_send(*, alert_id: int) -> BudgetAlert:
    """Deliver an alert once per channel; a channel already delivered is not sent again."""
    alert = BudgetAlert.objects.select_related("budget__tenant", "budget__api_key").get(pk=alert_id)
    payload = budget_alert_payload(alert)
    budget = alert.budget
    if budget.alert_webhook and not alert.webhook_status.startswith("sent"):
        alert.webhook_status = _webhook_post(budget.alert_webhook, payload)
    if budget.alert_email and not alert.email_status.startswith("sent"):
        alert.email_status = _email_send(budget.alert_email, payload)
    alert.save(update_fields=["webhook_status", "email_status"])
    return alert


def _webhook_post(url: str, payload: dict) -> str:
    # Checked when the budget was saved, and again now: the host name may resolve elsewhere today.
    if problem := url_destination_problem(url):
        logger.warning("budget alert webhook refused: %s", problem)
        return "refused: link-local or cloud metadata address"
    try:
        response = httpx.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        logger.warning("budget alert webhook failed: %s", type(exc).__name__)
        return f"failed: {type(exc).__name__}"
    return f"sent: HTTP {response.status_code}" if response.is_success else f"failed: HTTP {response.status_code}"


def _email_send(address: str, payload: dict) -> str:
    subject = (
        f"[gateway] {payload['tenant']} reached {payload['threshold_percent']}% of its "
        f"{payload['period']} budget"
    )
    body = "\n".join(f"{key}: {value}" for key, value in payload.items())
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [address])
    except Exception as exc:  # any mail backend failure is recorded, never raised into a request
        logger.warning("budget alert email failed: %s", type(exc).__name__)
        return f"failed: {type(exc).__name__}"
    return "sent"
