"""What the self-service pages accept: each field checked, each error said next to it."""

from __future__ import annotations

import re
from datetime import timezone as dt_timezone
from decimal import Decimal

from django import forms
from django.utils import timezone

from accounting.models import Period, TenantMembership
from accounting.selfservice.services import KeyLimits

MODEL_NAME = re.compile(r"^[\w.:/@+-]{1,200}$")
MAX_USD = Decimal("1000000000")
MAX_PER_MINUTE = 1_000_000_000
BUDGET_FIELDS = {period: f"{period}_usd" for period in Period.values}


def _usd(label: str) -> forms.DecimalField:
    return forms.DecimalField(
        label=label, required=False, min_value=Decimal("0.000001"), max_value=MAX_USD, max_digits=14,
        decimal_places=6, widget=forms.NumberInput(attrs={"step": "any", "placeholder": "none"}),
    )


def _per_minute(label: str) -> forms.IntegerField:
    return forms.IntegerField(
        label=label, required=False, min_value=1, max_value=MAX_PER_MINUTE,
        widget=forms.NumberInput(attrs={"placeholder": "none"}),
    )


class KeyLimitsForm(forms.Form):
    """A key's own budgets, one per period (each a hard cap: the tightest wins), and rate limits."""

    daily_usd = _usd("Daily budget (USD)")
    weekly_usd = _usd("Weekly budget (USD)")
    monthly_usd = _usd("Monthly budget (USD)")
    total_usd = _usd("Total budget (USD)")
    rpm = _per_minute("Requests per minute")
    tpm = _per_minute("Tokens per minute")

    def limits(self) -> KeyLimits:
        data = self.cleaned_data
        return KeyLimits(
            budgets={period: data.get(name) for period, name in BUDGET_FIELDS.items()},
            rpm=data.get("rpm"), tpm=data.get("tpm"),
        )

    @classmethod
    def initial_for(cls, key) -> dict:
        # "20", not "20.000000" nor normalize()'s "2E+1"
        initial = {BUDGET_FIELDS[b.period]: format(b.amount_usd.normalize(), "f")
                   for b in key.budgets.filter(enabled=True)}
        limit = key.rate_limits.first()
        if limit is not None:
            initial.update(rpm=limit.rpm, tpm=limit.tpm)
        return initial


class KeyCreateForm(KeyLimitsForm):
    name = forms.CharField(label="Name", max_length=100)
    allowed_models = forms.CharField(
        label="Allowed models", required=False, max_length=4000,
        help_text="Comma-separated model names; empty allows every model.",
    )
    expires_at = forms.DateTimeField(
        label="Expires (UTC)", required=False, input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: never.",
    )
    field_order = ["name", "allowed_models", "expires_at"]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Give the key a name.")
        return name

    def clean_allowed_models(self) -> list[str]:
        names = sorted({item.strip() for item in self.cleaned_data.get("allowed_models", "").split(",") if item.strip()})
        bad = [name for name in names if not MODEL_NAME.match(name)]
        if bad:
            raise forms.ValidationError(f"Not a model name: {', '.join(bad)}")
        return names

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        if value is None:
            return None
        value = value.replace(tzinfo=dt_timezone.utc) if timezone.is_naive(value) else value
        if value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value


class InviteForm(forms.Form):
    email = forms.EmailField(label="Email", max_length=150)
    role = forms.ChoiceField(label="Role", choices=TenantMembership.Role.choices, initial=TenantMembership.Role.VIEWER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=TenantMembership.Role.choices)


class RetentionForm(forms.Form):
    keep_content = forms.BooleanField(
        label="Keep each request's prompt and answer", required=False,
        help_text="For the request logs, corrections and stored Responses API answers.",
    )
    content_retention_days = forms.IntegerField(
        label="Delete kept content after (days)", min_value=1, max_value=3650,
    )
