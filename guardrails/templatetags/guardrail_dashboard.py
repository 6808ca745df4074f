"""`{% guardrail_events window tenant %}`: the guardrail events table of a dashboard page."""

from django import template

from guardrails.dashboards import guardrail_event_counts

register = template.Library()


@register.inclusion_tag("dashboard/_guardrails.html")
def guardrail_events(window, tenant=None) -> dict:
    return {"rows": guardrail_event_counts(window=window, tenant=tenant), "show_tenant": tenant is None}
