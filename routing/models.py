from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class Strategy(models.TextChoices):
    FALLBACK = "fallback", "Priority fallback"
    ROUND_ROBIN = "round_robin", "Round-robin"
    WEIGHTED = "weighted", "Weighted random"
    LOWEST_COST = "lowest_cost", "Lowest cost"
    LOWEST_LATENCY = "lowest_latency", "Lowest latency"
    LEAST_BUSY = "least_busy", "Least busy"
    BEST_RATED = "best_rated", "Best rated (learns from feedback)"


class RouteGroup(models.Model):
    """Deployments that can serve one logical model, and how to choose and retry among them."""

    name = models.SlugField(max_length=100, unique=True)
    strategy = models.CharField(max_length=20, choices=Strategy.choices, default=Strategy.FALLBACK)
    retries = models.PositiveSmallIntegerField(
        default=1, help_text="Extra attempts on the same deployment for a retryable failure."
    )
    attempt_timeout_seconds = models.FloatField(
        null=True, blank=True,
        help_text="Limit for one attempt (for streams: until the first chunk). Empty: provider's.",
    )
    total_timeout_seconds = models.FloatField(
        default=120.0, help_text="Deadline for all attempts of a request together."
    )
    breaker_failure_threshold = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Consecutive failures opening a deployment's breaker."
    )
    breaker_cooldown_seconds = models.FloatField(
        null=True, blank=True, help_text="Seconds an open breaker waits before a probe."
    )
    # best_rated (docs/routing.md): how quality and cost trade, and how much every deployment explores.
    best_rated_lambda = models.FloatField(
        default=0.0, validators=[MinValueValidator(0.0)],
        help_text="best_rated: rating points given up per dollar of expected cost per request (0: cost "
        "ignored).",
    )
    best_rated_min_share = models.FloatField(
        default=0.05, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="best_rated: the least share of first choices each deployment keeps (exploration).",
    )
    best_rated_min_ratings = models.PositiveIntegerField(
        default=30, help_text="best_rated: ratings a tenant needs on this route before its own posteriors "
        "are used instead of the global ones.",
    )
    best_rated_metric = models.SlugField(
        max_length=64, blank=True,
        help_text="best_rated: a feedback metric to rank on instead of the ratings (thumbs and scores).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """A provider model (with an optional specific provider key) inside a route group."""

    group = models.ForeignKey(RouteGroup, on_delete=models.CASCADE, related_name="deployments")
    provider_model = models.ForeignKey(
        "providers.ProviderModel", on_delete=models.CASCADE, related_name="deployments"
    )
    provider_key = models.ForeignKey(
        "providers.ProviderKey", on_delete=models.SET_NULL, null=True, blank=True,
        help_text="Empty: the provider's first enabled key.",
    )
    priority = models.IntegerField(default=0, help_text="Lower is tried first (fallback).")
    weight = models.PositiveIntegerField(default=1, help_text="Share of traffic (weighted).")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["group", "priority", "pk"]

    def __str__(self) -> str:
        return f"{self.group.name} → {self.provider_model}"


class RoutingRule(models.Model):
    """Which route group serves a request, by the model it names, who sends it and what for.

    Rules are tried by ascending priority; the first that matches wins. Empty conditions match
    everything. A request naming `provider:model` bypasses the rules.
    """

    name = models.SlugField(max_length=100, unique=True)
    priority = models.IntegerField(default=100)
    enabled = models.BooleanField(default=True)
    model = models.CharField(
        max_length=200, help_text="The model name clients send (may be a virtual alias like 'smart')."
    )
    tenants = models.ManyToManyField("accounting.Tenant", blank=True)
    api_keys = models.ManyToManyField("accounting.TenantApiKey", blank=True)
    task = models.CharField(
        max_length=100, blank=True,
        help_text="Matches metadata.task or the X-Gateway-Task header; empty matches any task.",
    )
    tags = models.JSONField(
        default=list, blank=True, help_text="All of these tags must be sent (metadata.tags)."
    )
    group = models.ForeignKey(RouteGroup, on_delete=models.PROTECT, related_name="rules")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return self.name


class Experiment(models.Model):
    """A split of one routing rule's traffic between variants, compared on feedback, cost and latency.

    While it runs, each request the rule matches is served by one variant, picked by weight; with
    a conversation id (`metadata.conversation_id` or `X-Gateway-Conversation-Id`) and `sticky`,
    every request of that conversation gets the same variant. Paused or stopped, the rule serves
    its own route group again; promoting a variant makes its route group the rule's.
    """

    class Status(models.TextChoices):
        RUNNING = "running"
        PAUSED = "paused"
        STOPPED = "stopped"
        PROMOTED = "promoted"
        HANDED_OVER = "handed_over", "Handed to best_rated"

    name = models.SlugField(max_length=100, unique=True)
    rule = models.ForeignKey(RoutingRule, on_delete=models.CASCADE, related_name="experiments")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING)
    sticky = models.BooleanField(default=True, help_text="Keep a conversation on one variant.")
    description = models.TextField(blank=True)
    winner = models.ForeignKey(
        "ExperimentVariant", on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule"], condition=models.Q(status="running"), name="one_running_experiment_per_rule"
            )
        ]

    def __str__(self) -> str:
        return self.name


class ExperimentVariant(models.Model):
    """One arm of an experiment: a route group, or a model alias served as the catalogue serves it."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    name = models.SlugField(max_length=50)
    weight = models.PositiveIntegerField(default=1, help_text="Share of the experiment's traffic.")
    group = models.ForeignKey(RouteGroup, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    model = models.CharField(
        max_length=200, blank=True, help_text="A model alias (or provider:model); used when no group is set."
    )

    class Meta:
        ordering = ["experiment", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="uniq_experiment_variant"),
            models.CheckConstraint(
                condition=(models.Q(group__isnull=False) & models.Q(model=""))
                | (models.Q(group__isnull=True) & ~models.Q(model="")),
                name="variant_group_xor_model",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.experiment.name}/{self.name}"


class RoutePosteriors(models.Model):
    """A best_rated route group's posteriors, as the beat last computed them from the feedback rollups.

    `data` holds, per deployment target (`provider:upstream_model`), the posterior of the route's
    quality globally and per tenant with enough ratings, the expected cost per request and the
    first-choice shares (`routing.posteriors`). Web processes keep the rows in process and read them
    again when `computed_at` moves; a late beat leaves the last rows in use, and their age is shown.
    """

    group = models.OneToOneField(RouteGroup, on_delete=models.CASCADE, related_name="posteriors")
    data = models.JSONField(default=dict)
    rollups_at = models.DateTimeField(null=True, blank=True, help_text="The newest feedback rollup read.")
    computed_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name_plural = "route posteriors"

    def __str__(self) -> str:
        return f"posteriors of {self.group.name}"
