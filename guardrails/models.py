"""Guardrail policies (per tenant, and one default for all), their rules, and the events they raise."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Coalesce


class Kind(models.TextChoices):
    PII_EMAIL = "pii_email", "PII: email address"
    PII_PHONE = "pii_phone", "PII: phone number"
    PII_CARD = "pii_card", "PII: payment card number (Luhn)"
    PII_IBAN = "pii_iban", "PII: IBAN (mod 97)"
    PII_NATIONAL_ID = "pii_national_id", "PII: national id (US SSN, UK NINO, ES DNI/NIE, IT codice fiscale)"
    BLOCKED_PATTERN = "blocked_pattern", "Blocked pattern (regular expression)"
    MAX_PROMPT_TOKENS = "max_prompt_tokens", "Maximum prompt size in tokens"
    MAX_PROMPT_CHARS = "max_prompt_chars", "Maximum prompt size in characters"


PII_KINDS = frozenset({Kind.PII_EMAIL, Kind.PII_PHONE, Kind.PII_CARD, Kind.PII_IBAN, Kind.PII_NATIONAL_ID})
SIZE_KINDS = frozenset({Kind.MAX_PROMPT_TOKENS, Kind.MAX_PROMPT_CHARS})


class Direction(models.TextChoices):
    INPUT = "input", "Input (the prompt)"
    OUTPUT = "output", "Output (the answer)"
    BOTH = "both", "Input and output"


class Action(models.TextChoices):
    BLOCK = "block", "Block"
    REDACT = "redact", "Redact"
    FLAG = "flag", "Flag (record only)"


def pattern_check(pattern: str) -> None:
    """A blocked pattern must compile and must not match the empty string (it would match everywhere)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValidationError({"pattern": f"Not a valid regular expression: {exc}."}) from exc
    if compiled.search("") is not None:
        raise ValidationError({"pattern": "The pattern matches the empty string, so it would match every text."})


class GuardrailPolicy(models.Model):
    """The rules for one tenant, or (tenant empty) the default for every tenant."""

    tenant = models.ForeignKey(
        "accounting.Tenant", null=True, blank=True, on_delete=models.CASCADE, related_name="guardrail_policies",
        help_text="Empty: the default policy, applied to every tenant.",
    )
    name = models.CharField(max_length=100, blank=True)
    enabled = models.BooleanField(default=True)
    inherit_default = models.BooleanField(
        default=True, help_text="Also apply the default policy's rules to this tenant."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "guardrail policies"
        constraints = [
            # One policy per tenant, and one default (tenant NULL counts as 0).
            models.UniqueConstraint(Coalesce("tenant", 0), name="guardrail_policy_one_per_tenant"),
        ]

    def __str__(self) -> str:
        scope = self.tenant.slug if self.tenant_id else "default (all tenants)"
        return f"{self.name} ({scope})" if self.name else scope


class GuardrailRule(models.Model):
    policy = models.ForeignKey(GuardrailPolicy, on_delete=models.CASCADE, related_name="rules")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    direction = models.CharField(max_length=8, choices=Direction.choices, default=Direction.BOTH)
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.BLOCK)
    pattern = models.TextField(blank=True, help_text="blocked_pattern: a Python regular expression.")
    limit = models.PositiveIntegerField(null=True, blank=True, help_text="max_prompt_*: the largest prompt allowed.")
    label = models.CharField(max_length=100, blank=True, help_text="Shown in errors and events instead of the kind.")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["policy", "pk"]

    def __str__(self) -> str:
        return self.label or f"{self.kind} ({self.direction}, {self.action})"

    def clean(self) -> None:
        if self.kind == Kind.BLOCKED_PATTERN:
            if not self.pattern:
                raise ValidationError({"pattern": "A blocked_pattern rule needs a pattern."})
            pattern_check(self.pattern)
        elif self.pattern:
            raise ValidationError({"pattern": "Only blocked_pattern rules take a pattern."})
        if self.kind in SIZE_KINDS:
            if not self.limit:
                raise ValidationError({"limit": "A maximum prompt size rule needs a limit."})
            if self.direction != Direction.INPUT:
                raise ValidationError({"direction": "A maximum prompt size applies to the input only."})
            if self.action == Action.REDACT:
                raise ValidationError({"action": "A prompt cannot be redacted to size: block or flag."})
        elif self.limit is not None:
            raise ValidationError({"limit": "Only max_prompt_* rules take a limit."})

    def save(self, *args, **kwargs) -> None:
        self.clean()  # a bad regex never reaches the hot path, whoever saves the rule
        super().save(*args, **kwargs)


class GuardrailEvent(models.Model):
    """One rule matching one request. Never holds the matched text: only where it was and its shape."""

    tenant = models.ForeignKey("accounting.Tenant", on_delete=models.CASCADE, related_name="guardrail_events")
    request_id = models.UUIDField(db_index=True, help_text="The UsageRecord's request id.")
    response_id = models.CharField(max_length=64, blank=True)
    rule = models.ForeignKey(GuardrailRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    direction = models.CharField(max_length=8, choices=[c for c in Direction.choices if c[0] != "both"])
    action = models.CharField(max_length=8, choices=Action.choices)
    location = models.CharField(max_length=100, blank=True, help_text="Where: messages[0].content, choices[0]…")
    start = models.PositiveIntegerField(null=True, blank=True)
    end = models.PositiveIntegerField(null=True, blank=True)
    snippet = models.CharField(max_length=200, blank=True, help_text="A masked form: letters as x, digits as 9.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="guardrail_event_tenant_time")]

    def __str__(self) -> str:
        return f"{self.kind} {self.action} ({self.direction})"
