"""Experiments: which variant serves a request, how the variants compare, and promotion.

Variant choice is by weight. With a conversation id and a sticky experiment the choice is a
hash of (experiment, conversation), so every request of the conversation, in any process, gets
the same variant without shared state; without one it is random.

The read-out compares variants on the requests they served since the experiment started:
feedback (the 0..1 `rating_value` of each rating: thumbs and 1-5 scores on one scale), cost per
request and latency. Means come with a 95% confidence interval (normal approximation, t for small
samples); a variant is called better only when Welch's test puts the difference in mean rating
below p = 0.05 and each side has at least `MIN_RATINGS` ratings. Otherwise the read-out says the
difference is not yet significant.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from statistics import NormalDist

from django.db import transaction
from django.db.models import Avg, Count, Sum

from accounting.models import UsageRecord
from feedback.models import Feedback
from routing.models import Deployment, Experiment, ExperimentVariant, RouteGroup, Strategy
from routing.selectors import ExperimentConfig, VariantConfig

MIN_RATINGS = 10
ALPHA = 0.05
_NORMAL = NormalDist()


def variant_pick(experiment: ExperimentConfig, *, conversation: str = "") -> VariantConfig:
    total = sum(variant.weight for variant in experiment.variants)
    if conversation and experiment.sticky:
        digest = hashlib.sha256(f"{experiment.name}\x00{conversation}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
    else:
        point = random.randrange(total)
    for variant in experiment.variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return experiment.variants[-1]


# --- the read-out -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    mean: float | None
    low: float | None
    high: float | None
    n: int


@dataclass(frozen=True)
class VariantResult:
    pk: int
    name: str
    target: str
    weight: int
    requests: int
    errors: int
    rating: Interval
    cost_per_request: float | None
    latency_ms: Interval


@dataclass(frozen=True)
class Verdict:
    decided: bool
    better: str  # the variant with the higher mean rating, "" when there is none
    p_value: float | None
    text: str


def _t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t: exact values for small df, normal beyond."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
             10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
    if df <= 0:
        return math.inf
    for limit in sorted(table):
        if df <= limit:
            return table[limit]
    return _NORMAL.inv_cdf(1 - ALPHA / 2)


def interval(values: list[float]) -> Interval:
    n = len(values)
    if n == 0:
        return Interval(None, None, None, 0)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, None, None, 1)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = _t_quantile(n - 1) * math.sqrt(variance / n)
    return Interval(mean, mean - half, mean + half, n)


def welch_p_value(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's test for a difference in means (normal approximation)."""
    if len(a) < 2 or len(b) < 2:
        return None
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    var_a = sum((v - mean_a) ** 2 for v in a) / (len(a) - 1)
    var_b = sum((v - mean_b) ** 2 for v in b) / (len(b) - 1)
    se = math.sqrt(var_a / len(a) + var_b / len(b))
    if se == 0:
        return 1.0 if mean_a == mean_b else 0.0
    return 2 * (1 - _NORMAL.cdf(abs(mean_a - mean_b) / se))


def _verdict(results: list[VariantResult], ratings: dict[str, list[float]]) -> Verdict:
    rated = sorted((r for r in results if r.rating.mean is not None), key=lambda r: r.rating.mean, reverse=True)
    if len(rated) < 2:
        return Verdict(False, "", None, "Not enough ratings yet: at least two variants need ratings.")
    best, runner_up = rated[0], rated[1]
    p_value = welch_p_value(ratings[best.name], ratings[runner_up.name])
    few = min(best.rating.n, runner_up.rating.n) < MIN_RATINGS
    if few or p_value is None or p_value >= ALPHA:
        reason = (
            f"fewer than {MIN_RATINGS} ratings on a variant" if few or p_value is None
            else f"p = {p_value:.3f} ≥ {ALPHA}"
        )
        return Verdict(False, "", p_value, f"The difference is not yet significant ({reason}).")
    return Verdict(
        True, best.name, p_value,
        f"'{best.name}' is rated better than '{runner_up.name}' "
        f"({best.rating.mean:.2f} vs {runner_up.rating.mean:.2f}, p = {p_value:.3g}).",
    )


def experiment_results(experiment: Experiment) -> tuple[list[VariantResult], Verdict]:
    records = UsageRecord.objects.filter(experiment=experiment.name, created_at__gte=experiment.created_at)
    results, ratings = [], {}
    for variant in experiment.variants.select_related("group"):
        served = records.filter(variant=variant.name)
        totals = served.aggregate(requests=Count("pk"), cost=Sum("cost_usd"), mean_latency=Avg("latency_ms"))
        errors = served.filter(status=UsageRecord.Status.ERROR).count()
        latencies = list(served.exclude(status=UsageRecord.Status.ERROR).values_list("latency_ms", flat=True))
        values = list(
            Feedback.objects.filter(usage_record__in=served, rating_value__isnull=False)
            .values_list("rating_value", flat=True)
        )
        ratings[variant.name] = values
        requests = totals["requests"] or 0
        results.append(VariantResult(
            pk=variant.pk,
            name=variant.name,
            target=variant.group.name if variant.group_id else variant.model,
            weight=variant.weight,
            requests=requests,
            errors=errors,
            rating=interval(values),
            cost_per_request=float(totals["cost"]) / requests if requests and totals["cost"] is not None else None,
            latency_ms=interval([float(v) for v in latencies]),
        ))
    return results, _verdict(results, ratings)


# --- operator actions -------------------------------------------------------------------------------
def experiment_pause(experiment: Experiment) -> None:
    experiment.status = Experiment.Status.PAUSED
    experiment.save(update_fields=["status", "updated_at"])


def experiment_resume(experiment: Experiment) -> None:
    experiment.status = Experiment.Status.RUNNING
    experiment.save(update_fields=["status", "updated_at"])


def experiment_stop(experiment: Experiment) -> None:
    experiment.status = Experiment.Status.STOPPED
    experiment.save(update_fields=["status", "updated_at"])


@transaction.atomic
def experiment_promote(experiment: Experiment, variant: ExperimentVariant) -> RouteGroup:
    """Adopt the winner: make the variant the rule's route group and end the experiment.

    A model variant gets a route group of its own (named `<experiment>-<variant>`), holding the
    deployments that serve the alias, so that the rule keeps the routing it was tested with.
    """
    if variant.experiment_id != experiment.pk:
        raise ValueError("That variant belongs to another experiment.")
    group = variant.group
    if group is None:
        group = RouteGroup.objects.create(name=f"{experiment.name}-{variant.name}"[:100])
        for index, provider_model in enumerate(_serving(variant.model)):
            Deployment.objects.create(group=group, provider_model=provider_model, priority=index)
    _experiment_end(experiment, group=group, status=Experiment.Status.PROMOTED, winner=variant)
    return group


@transaction.atomic
def experiment_hand_to_best_rated(experiment: Experiment) -> RouteGroup:
    """End the experiment by handing the rule to the best_rated strategy: a new route group
    (`<experiment>-best-rated`) holds every variant's deployments, and feedback decides from now on
    how much traffic each gets (docs/routing.md)."""
    group = RouteGroup.objects.create(name=f"{experiment.name}-best-rated"[:100], strategy=Strategy.BEST_RATED)
    seen: set[tuple[int, int | None]] = set()
    for variant in experiment.variants.select_related("group").order_by("pk"):
        if variant.group is not None:
            rows = [(d.provider_model, d.provider_key, d.enabled) for d in variant.group.deployments.all()]
        else:
            rows = [(model, None, True) for model in _serving(variant.model)]
        for provider_model, key, enabled in rows:
            if (provider_model.pk, key.pk if key else None) in seen:
                continue
            seen.add((provider_model.pk, key.pk if key else None))
            Deployment.objects.create(
                group=group, provider_model=provider_model, provider_key=key, enabled=enabled, priority=len(seen) - 1
            )
    _experiment_end(experiment, group=group, status=Experiment.Status.HANDED_OVER, winner=None)
    return group


def _serving(model: str):
    """The enabled provider models serving a variant's model name (`alias` or `provider:alias`)."""
    from providers.models import ProviderModel

    provider, sep, alias = model.partition(":")
    serving = ProviderModel.objects.filter(enabled=True, provider__enabled=True)
    if sep and serving.filter(provider__name=provider, alias=alias).exists():
        serving = serving.filter(provider__name=provider, alias=alias)
    else:
        serving = serving.filter(alias=model)
    return serving.order_by("provider__priority", "pk")


def _experiment_end(experiment: Experiment, *, group: RouteGroup, status: str, winner) -> None:
    rule = experiment.rule
    rule.group = group
    rule.save(update_fields=["group", "updated_at"])
    experiment.status, experiment.winner = status, winner
    experiment.save(update_fields=["status", "winner", "updated_at"])
