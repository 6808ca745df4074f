import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from kernel.upstream_urls import upstream_url_validate


class Tenant(models.Model):
    """A team or customer that calls the gateway with its own API keys."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    keep_content = models.BooleanField(
        default=False,
        help_text="Keep each request's prompt and answer (for dashboards, corrections and logs).",
    )
    content_retention_days = models.PositiveIntegerField(
        default=30, help_text="Kept content is deleted this many days after the request."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class TenantApiKey(models.Model):
    """A tenant's API key, stored only as a SHA-256 hash.

    The secret is random (256 bits), so a fast hash is enough; the visible `prefix` lets an
    operator recognise a key in lists without storing it. The plaintext is shown once, when the
    key is created (`accounting.services.api_key_create`).
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, default="default")
    prefix = models.CharField(max_length=16, editable=False)
    hashed_key = models.CharField(max_length=64, unique=True, editable=False)
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text="Model aliases this key may use; empty means every model.",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant__slug", "name"]
        verbose_name = "tenant API key"

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name} ({self.prefix}…)"

    def is_usable(self, *, now=None) -> bool:
        now = now or timezone.now()
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


class UsageRecord(models.Model):
    """One row per answered request: the system of record for spend, latency and errors."""

    class Status(models.TextChoices):
        SUCCESS = "success"
        ERROR = "error"
        CANCELLED = "cancelled"

    # Unique with created_at (`usage_request_once`), not alone: on PostgreSQL the table is
    # partitioned by created_at's month and a partitioned table's unique keys must hold its
    # partition column. A request's record carries the time it was first written (the record step
    # pins it before any retry, the journal keeps it), so a second write of it still collides.
    request_id = models.UUIDField(default=uuid.uuid4, db_index=True, editable=False)
    response_id = models.CharField(max_length=100, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # No index of their own: usage_tenant_time_id and usage_key_time lead with them.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_records", db_index=False)
    api_key = models.ForeignKey(
        TenantApiKey, on_delete=models.SET_NULL, null=True, related_name="usage_records", db_index=False
    )
    endpoint = models.CharField(max_length=32)
    requested_model = models.CharField(max_length=200, blank=True)
    provider = models.ForeignKey(
        "providers.Provider", on_delete=models.SET_NULL, null=True, blank=True
    )
    provider_name = models.CharField(max_length=64, blank=True)
    served_model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(
        default=False,
        help_text="Some tokens counted by the gateway because the provider reported none: which side "
        "says prompt_tokens_estimated and completion_tokens_estimated.",
    )
    prompt_tokens_estimated = models.BooleanField(
        default=False, help_text="The prompt tokens are the gateway's count (the provider reported none)."
    )
    completion_tokens_estimated = models.BooleanField(
        default=False,
        help_text="The completion tokens are the gateway's count of the text read from the provider "
        "(the provider reported none).",
    )
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal("0"))
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices)
    http_status = models.PositiveSmallIntegerField(default=200)
    error_class = models.CharField(max_length=40, blank=True)
    attempts = models.JSONField(default=list, blank=True)
    end_user = models.CharField(max_length=256, blank=True)
    cached_tokens = models.PositiveIntegerField(
        default=0, help_text="Prompt tokens the provider served from its cache (cheaper price)."
    )
    units = models.DecimalField(
        max_digits=14, decimal_places=3, default=Decimal("0"),
        help_text="What the provider billed besides tokens, in `unit_kind`s.",
    )
    unit_kind = models.CharField(
        max_length=16, blank=True,
        help_text="image, audio_second, character or search; empty when only tokens are billed.",
    )
    task = models.CharField(max_length=100, blank=True)
    tags = models.JSONField(default=list, blank=True)
    route = models.CharField(max_length=100, blank=True, help_text="The routing rule that matched.")
    route_group = models.CharField(max_length=100, blank=True)
    experiment = models.CharField(max_length=100, blank=True)
    variant = models.CharField(max_length=100, blank=True, help_text="The experiment variant served.")
    conversation_id = models.CharField(max_length=200, blank=True)
    routing_strategy = models.CharField(
        max_length=20, blank=True, help_text="The routing strategy that ordered the deployments."
    )
    routing_propensity = models.FloatField(
        null=True, blank=True,
        help_text="The probability with which the strategy chose the deployment that served (first).",
    )
    cache = models.CharField(
        max_length=10, blank=True, help_text="hit, miss or semantic when the cache was consulted."
    )
    saved_cost_usd = models.DecimalField(
        max_digits=14, decimal_places=8, default=Decimal("0"),
        help_text="What a cache hit saved: the cost of the answer it reused.",
    )
    reserved_usd = models.DecimalField(
        max_digits=14, decimal_places=8, null=True, blank=True,
        help_text="What the request held on its hard budgets before the call (its worst case); "
        "empty when no hard budget applied.",
    )

    class Meta:
        ordering = ["-created_at"]
        # The request log explorer (requestlogs/) pages newest first by (created_at, id), a
        # tenant's rows or every tenant's (the created_at index); the other indexes serve its
        # selective filters, where walking the time index would read most of a tenant's rows
        # to find a page: errors (a partial index, written only for failed requests), one end
        # user, one API key. docs/dashboards.md has the figures at 1,000,000 records.
        indexes = [
            models.Index(fields=["tenant", "created_at", "id"], name="usage_tenant_time_id"),
            models.Index(fields=["tenant", "conversation_id"], name="usage_tenant_conversation"),
            models.Index(
                fields=["tenant", "created_at", "id"], condition=~models.Q(status="success"),
                name="usage_tenant_errors",
            ),
            models.Index(fields=["tenant", "end_user", "created_at"], name="usage_tenant_end_user"),
            models.Index(fields=["api_key", "created_at"], name="usage_key_time"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["request_id", "created_at"], name="usage_request_once"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.tenant_id} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageContent(models.Model):
    """The prompt and answer of one request, kept only for tenants with `keep_content`.

    Apart from the UsageRecord so that the system of record stays small, and deleted after the
    tenant's `content_retention_days` by `accounting.tasks.content_retention_task`.
    """

    # No database constraint: a foreign key must point at a unique key, and on PostgreSQL the
    # partitioned records' keys are (id, created_at). Django's collector still cascades deletes.
    usage_record = models.OneToOneField(
        UsageRecord, on_delete=models.CASCADE, related_name="content", db_constraint=False
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    messages = models.JSONField(default=list, help_text="The request's messages (or embedding input).")
    completion = models.TextField(blank=True)

    class Meta:
        verbose_name_plural = "usage content"

    def __str__(self) -> str:
        return f"content of {self.usage_record_id}"


class StoredResponse(models.Model):
    """A Responses API answer kept for `GET /v1/responses/{id}` and `previous_response_id`.

    Only for tenants with `keep_content` (it is the prompt and the answer), deleted with their other
    kept content after `content_retention_days` (`accounting.services.content_retention_enforce`).
    """

    response_id = models.CharField(max_length=64, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    context = models.JSONField(default=list, help_text="The items of the earlier responses it continues.")
    input_items = models.JSONField(default=list, help_text="The request's own input items.")
    response = models.JSONField(default=dict, help_text="The Response object as it was answered.")

    def __str__(self) -> str:
        return self.response_id


class TenantMembership(models.Model):
    """A Django user who belongs to a tenant: sees that tenant's dashboards, and only those.

    A `viewer` sees the dashboards, the request logs and the playground; an `admin` also manages
    the tenant's API keys (with their budgets and rate limits), its members and its content
    retention on the self-service pages (`accounting.selfservice`).
    """

    class Role(models.TextChoices):
        VIEWER = "viewer"
        ADMIN = "admin"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="members")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    @property
    def is_admin(self) -> bool:
        return self.role == self.Role.ADMIN

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant.slug}"


class Period(models.TextChoices):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    TOTAL = "total"


class Budget(models.Model):
    """A spending cap in USD for a tenant, or for one of its API keys, per period.

    A hard budget refuses requests that could push spend past it (reservation before the call); a
    soft one only alerts. Alerts fire once per period at each threshold (percent of the amount).
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budgets")
    api_key = models.ForeignKey(
        TenantApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets",
        help_text="Empty: the budget covers the whole tenant.",
    )
    amount_usd = models.DecimalField(max_digits=14, decimal_places=6)
    period = models.CharField(max_length=10, choices=Period.choices, default=Period.MONTHLY)
    hard = models.BooleanField(default=True)
    alert_thresholds = models.JSONField(default=list, blank=True, help_text="Percentages, e.g. [50, 80, 100].")
    # Never a link-local or cloud metadata address; checked again when an alert is sent.
    alert_webhook = models.URLField(max_length=500, blank=True, validators=[upstream_url_validate])
    alert_email = models.EmailField(blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "api_key", "period"], name="uniq_budget_scope_period"),
            models.UniqueConstraint(
                fields=["tenant", "period"], condition=models.Q(api_key__isnull=True),
                name="uniq_tenant_budget_period",
            ),
        ]

    def __str__(self) -> str:
        scope = f"{self.tenant.slug}/{self.api_key.name}" if self.api_key_id else self.tenant.slug
        return f"{scope} {self.period} ${self.amount_usd} ({'hard' if self.hard else 'soft'})"


class BudgetPeriod(models.Model):
    """Spend and reservations of one budget in one period; a new period starts a new row."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="periods")
    period_start = models.DateTimeField()
    spent_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal("0"))
    reserved_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal("0"))

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start"], name="uniq_budget_period")
        ]


class BudgetReservation(models.Model):
    """Money held for a request in flight; settled (deleted) when its UsageRecord is written."""

    budget_period = models.ForeignKey(BudgetPeriod, on_delete=models.CASCADE, related_name="reservations")
    request_id = models.UUIDField(db_index=True)
    amount_usd = models.DecimalField(max_digits=14, decimal_places=8)
    created_at = models.DateTimeField(auto_now_add=True)


class BudgetAlert(models.Model):
    """One alert per budget, period and threshold: recorded, then sent by webhook and email."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField()
    spent_usd = models.DecimalField(max_digits=14, decimal_places=8)
    created_at = models.DateTimeField(auto_now_add=True)
    webhook_status = models.CharField(max_length=100, blank=True)
    email_status = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start", "threshold"], name="uniq_budget_alert")
        ]


class RateLimit(models.Model):
    """Requests and tokens per minute for a tenant or one of its keys (token buckets)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="rate_limits")
    api_key = models.ForeignKey(
        TenantApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="rate_limits",
        help_text="Empty: the limit covers the whole tenant.",
    )
    rpm = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute.")
    tpm = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute.")
    queue_seconds = models.FloatField(
        default=0, help_text="Wait up to this long for capacity instead of answering 429 at once."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "api_key"], name="uniq_rate_limit_scope"),
            models.UniqueConstraint(
                fields=["tenant"], condition=models.Q(api_key__isnull=True), name="uniq_tenant_rate_limit"
            ),
        ]


class UsageRollup(models.Model):
    """Usage aggregated per tenant, time bucket and one dimension: every field adds up, so runs add
    new records in (accounting.rollups) and buckets merge into any range."""

    class Granularity(models.TextChoices):
        HOUR = "hour"
        DAY = "day"

    class Dimension(models.TextChoices):
        TOTAL = "total"
        API_KEY = "api_key"
        MODEL = "model"
        TASK = "task"
        TAG = "tag"
        END_USER = "end_user"
        ROUTE = "route"
        ENDPOINT = "endpoint"

    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    bucket_start = models.DateTimeField()
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="rollups")
    dimension = models.CharField(max_length=10, choices=Dimension.choices)
    value = models.CharField(max_length=256, blank=True, help_text="Key id, model, task, tag, user, route or endpoint.")
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    errors_by_class = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal("0"))
    cache_hits = models.PositiveIntegerField(default=0)
    saved_cost_usd = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal("0"))
    # Percentiles read from the sketches (accounting.sketches: within 1 % of the exact value).
    latency_p50_ms = models.FloatField(null=True, blank=True)
    latency_p95_ms = models.FloatField(null=True, blank=True)
    latency_p99_ms = models.FloatField(null=True, blank=True)
    ttft_p50_ms = models.FloatField(null=True, blank=True)
    ttft_p95_ms = models.FloatField(null=True, blank=True)
    ttft_p99_ms = models.FloatField(null=True, blank=True)
    latency_sketch = models.JSONField(default=dict, blank=True, help_text="DDSketch bins {key: count}.")
    ttft_sketch = models.JSONField(default=dict, blank=True, help_text="DDSketch bins {key: count}.")
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["granularity", "bucket_start", "tenant", "dimension", "value"], name="uniq_rollup"
            )
        ]
        indexes = [models.Index(fields=["tenant", "granularity", "dimension", "bucket_start"], name="rollup_read")]


class RollupCursor(models.Model):
    """How far `accounting.rollups.rollup_recent` has read UsageRecords, by id.

    Records with a larger id are new since the last run; their `created_at` names the buckets to
    recompute, however old. `pending_gaps` holds id ranges skipped because they were not visible
    yet (a transaction still open when the cursor moved past them), as `[first, last, seen_at]`.
    """

    name = models.CharField(max_length=40, unique=True)
    last_record_id = models.BigIntegerField(default=0)
    pending_gaps = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} @ {self.last_record_id}"


class UsageRecordChange(models.Model):
    """A correction of a UsageRecord after it was written: its rollup fields before and after.

    Written with the change, in its transaction (`accounting.services.usage_record_correct`); the
    rollups read these by id, as they read records, and apply each as a difference. Holds the
    record's id, not a foreign key: the record may be dropped with its month's partition later.
    """

    record_id = models.BigIntegerField(db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    before = models.JSONField()
    after = models.JSONField()

    def __str__(self) -> str:
        return f"change {self.pk} of record {self.record_id}"
