from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Value
from django.db.models.functions import Coalesce


class CacheMode(models.TextChoices):
    OFF = "off", "Off"
    DETERMINISTIC = "deterministic", "Exact, for deterministic requests (temperature 0) and those that ask"
    EXACT = "exact", "Exact, for every request"
    SEMANTIC = "semantic", "Exact and semantic, for every request"


class CachePolicy(models.Model):
    """How the response cache treats the requests of a tenant, of a routing rule, or of both.

    The most specific enabled policy wins: tenant and rule, then rule, then tenant, then the
    global one (neither set). Without any, deterministic requests are cached for
    `GATEWAY_CACHE_TTL_SECONDS`.
    """

    name = models.SlugField(max_length=100, unique=True)
    tenant = models.ForeignKey(
        "accounting.Tenant", on_delete=models.CASCADE, null=True, blank=True, related_name="cache_policies",
        help_text="Empty: every tenant.",
    )
    rule = models.ForeignKey(
        "routing.RoutingRule", on_delete=models.CASCADE, null=True, blank=True, related_name="cache_policies",
        help_text="Empty: every rule (and requests no rule matched).",
    )
    mode = models.CharField(max_length=20, choices=CacheMode.choices, default=CacheMode.DETERMINISTIC)
    ttl_seconds = models.PositiveIntegerField(
        default=3600, validators=[MinValueValidator(1), MaxValueValidator(30 * 86400)],
        help_text="How long an answer stays in the cache.",
    )
    semantic_threshold = models.DecimalField(
        max_digits=4, decimal_places=3, default=Decimal("0.950"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1"))],
        help_text="Semantic mode: the cosine similarity an earlier request must reach to be reused.",
    )
    embedding_model = models.CharField(
        max_length=200, blank=True,
        help_text="Semantic mode: the gateway model (mode embedding) that embeds the request's text.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "cache policies"
        # One policy per scope, an absent tenant or rule (the default scope) counting as one value:
        # a unique index on the ids with NULL read as 0, which SQLite and PostgreSQL both build
        # (`nulls_distinct=False` says the same, but SQLite has no NULLS NOT DISTINCT: check W047).
        constraints = [
            models.UniqueConstraint(
                Coalesce("tenant", Value(0)), Coalesce("rule", Value(0)), name="caching_policy_one_per_scope",
                violation_error_message="A cache policy for this tenant and rule already exists.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.mode == CacheMode.SEMANTIC and not self.embedding_model:
            raise ValidationError({"embedding_model": "Semantic mode needs an embedding model."})
