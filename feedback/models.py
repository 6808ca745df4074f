from django.db import models
from django.db.models import Q


class Feedback(models.Model):
    """A judgement of one response (the UsageRecord it was served as), from one source.

    One row per (response, source): sending feedback on the same response again from the same
    source updates the row instead of adding a second vote. `rating` is a thumb (+1 / -1) and
    `score` a 1-5 scale; `rating_value` puts either on one 0..1 scale (thumb up 1, down 0,
    score (s - 1) / 4) so that dashboards and experiments can average them together.
    """

    tenant = models.ForeignKey("accounting.Tenant", on_delete=models.CASCADE, related_name="feedback")
    usage_record = models.ForeignKey(
        # No database constraint: the records are partitioned on PostgreSQL (accounting.UsageRecord).
        "accounting.UsageRecord", on_delete=models.CASCADE, related_name="feedback", db_constraint=False
    )
    response_id = models.CharField(max_length=100, db_index=True)
    source = models.CharField(max_length=32, default="playground")
    rating = models.SmallIntegerField(null=True, blank=True, help_text="+1 (good) or -1 (bad).")
    score = models.SmallIntegerField(null=True, blank=True, help_text="1 (worst) to 5 (best).")
    rating_value = models.FloatField(
        null=True, blank=True, editable=False, help_text="The score (or thumb) on a 0..1 scale."
    )
    correction = models.TextField(blank=True, help_text="What the answer should have said.")
    tags = models.JSONField(default=list, blank=True)
    comment = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    rolled = models.JSONField(
        null=True, blank=True, editable=False, help_text="What the rollups counted of it (feedback.rollups)."
    )

    class Meta:
        ordering = ["-updated_at"]
        verbose_name_plural = "feedback"
        constraints = [
            models.UniqueConstraint(fields=["usage_record", "source"], name="uniq_feedback_record_source")
        ]
        indexes = [models.Index(fields=["tenant", "created_at"], name="feedback_tenant_time")]

    def __str__(self) -> str:
        rating = f" {self.rating:+d}" if self.rating is not None else ""
        return f"{self.response_id} {self.source}{rating}"


class FeedbackMetric(models.Model):
    """A named measure a tenant declares and then sends with its feedback (`metrics`)."""

    class Kind(models.TextChoices):
        BOOLEAN = "boolean"
        FLOAT = "float"

    class Scope(models.TextChoices):
        RESPONSE = "response", "Per response"
        CONVERSATION = "conversation", "Per conversation id"

    tenant = models.ForeignKey("accounting.Tenant", on_delete=models.CASCADE, related_name="feedback_metrics")
    name = models.SlugField(max_length=64)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.FLOAT)
    scope = models.CharField(max_length=12, choices=Scope.choices, default=Scope.RESPONSE)
    min_value = models.FloatField(null=True, blank=True, help_text="Float metrics: lowest accepted value.")
    max_value = models.FloatField(null=True, blank=True, help_text="Float metrics: highest accepted value.")
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant__slug", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="uniq_feedback_metric")]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name}"


class MetricValue(models.Model):
    """One value of a declared metric: for a response, or for a whole conversation, per source."""

    tenant = models.ForeignKey("accounting.Tenant", on_delete=models.CASCADE, related_name="+")
    metric = models.ForeignKey(FeedbackMetric, on_delete=models.CASCADE, related_name="values")
    source = models.CharField(max_length=32)
    usage_record = models.ForeignKey(
        "accounting.UsageRecord", on_delete=models.CASCADE, null=True, blank=True, related_name="metric_values",
        db_constraint=False,
    )
    conversation_id = models.CharField(max_length=200, blank=True)
    value = models.FloatField(help_text="Booleans are stored as 1.0 / 0.0.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    rolled = models.JSONField(
        null=True, blank=True, editable=False, help_text="What the rollups counted of it (feedback.rollups)."
    )

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["metric", "source", "usage_record"], condition=Q(usage_record__isnull=False),
                name="uniq_metric_value_response",
            ),
            models.UniqueConstraint(
                fields=["metric", "source", "conversation_id"], condition=Q(usage_record__isnull=True),
                name="uniq_metric_value_conversation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.metric.name}={self.value}"


class FeedbackRollup(models.Model):
    """Feedback aggregated per tenant, time bucket (of the rated requests) and one dimension.

    Buckets follow the rated request's `created_at`, so a row sits next to the UsageRollup of
    the same requests (their cost and latency). Every field adds up: runs add what changed in.
    Sums and sums of squares are kept so that means and confidence intervals merge across buckets.
    """

    class Dimension(models.TextChoices):
        TOTAL = "total"
        MODEL = "model"
        ROUTE = "route"
        TAG = "tag"
        VARIANT = "variant"
        DEPLOYMENT = "deployment"  # `route_group/provider:served_model`: what best_rated learns from

    granularity = models.CharField(max_length=4)
    bucket_start = models.DateTimeField()
    tenant = models.ForeignKey("accounting.Tenant", on_delete=models.CASCADE, related_name="feedback_rollups")
    dimension = models.CharField(max_length=10, choices=Dimension.choices)
    value = models.CharField(max_length=256, blank=True)
    feedback = models.PositiveIntegerField(default=0, help_text="Feedback rows.")
    ratings = models.PositiveIntegerField(default=0, help_text="Rows with a thumb or a score.")
    rating_sum = models.FloatField(default=0.0)
    rating_sumsq = models.FloatField(default=0.0)
    thumbs_up = models.PositiveIntegerField(default=0)
    thumbs_down = models.PositiveIntegerField(default=0)
    corrections = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True, help_text="{name: {count, sum, sumsq}}")
    feedback_tags = models.JSONField(default=dict, blank=True, help_text="{tag given in feedback: count}")
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["granularity", "bucket_start", "tenant", "dimension", "value"], name="uniq_feedback_rollup"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "granularity", "dimension", "bucket_start"], name="feedback_rollup_read")
        ]


class FeedbackRollupCursor(models.Model):
    """How far the feedback rollup has read feedback changes (by `updated_at`)."""

    name = models.CharField(max_length=40, unique=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
