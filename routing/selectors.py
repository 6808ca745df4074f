"""The routing table: rules, route groups and the provider catalogue, cached for the hot path.

Built in one sync step and kept in process while the configuration generation stays the same
(`kernel.config_generation`): any change to a rule, group, provider or model is seen at once
in the process that made it and within `GATEWAY_CONFIG_CACHE_SECONDS` in the others.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kernel.config_cache import ConfigCache
from providers.selectors import Catalog, Deployment, catalog_build
from routing.breakers import BreakerPolicy
from routing.models import Experiment, RouteGroup, RoutingRule, Strategy

DEFAULT_RETRIES = 1
DEFAULT_TOTAL_TIMEOUT = 120.0


@dataclass(frozen=True)
class BestRatedSettings:
    """The best_rated strategy's settings of a route group (docs/routing.md)."""

    lam: float = 0.0
    min_share: float = 0.05
    min_ratings: int = 30
    metric: str = ""


@dataclass(frozen=True)
class GroupConfig:
    """How to choose among and retry a set of deployments."""

    name: str
    strategy: str
    retries: int
    attempt_timeout: float | None
    total_timeout: float
    policy: BreakerPolicy
    deployments: tuple[Deployment, ...]
    best_rated: BestRatedSettings = BestRatedSettings()

    @classmethod
    def implicit(cls, deployments: list[Deployment]) -> GroupConfig:
        """Every provider serving an alias, when no rule names a group: priority fallback."""
        return cls(
            name="",
            strategy=Strategy.FALLBACK,
            retries=DEFAULT_RETRIES,
            attempt_timeout=None,
            total_timeout=DEFAULT_TOTAL_TIMEOUT,
            policy=BreakerPolicy.default(),
            deployments=tuple(deployments),
        )


@dataclass(frozen=True)
class VariantConfig:
    """An experiment arm: a route group, or (group None) a model alias resolved per request."""

    name: str
    weight: int
    group: GroupConfig | None
    model: str


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    sticky: bool
    variants: tuple[VariantConfig, ...]


@dataclass(frozen=True)
class Rule:
    name: str
    model: str
    tenant_ids: frozenset[int]
    key_ids: frozenset[int]
    task: str
    tags: frozenset[str]
    group: GroupConfig
    experiment: ExperimentConfig | None = None  # a running experiment splitting this rule's traffic

    def matches(self, *, model: str, tenant_id: int, key_id: int, task: str, tags: frozenset[str]) -> bool:
        return (
            self.model == model
            and (not self.tenant_ids or tenant_id in self.tenant_ids)
            and (not self.key_ids or key_id in self.key_ids)
            and (not self.task or self.task == task)
            and self.tags <= tags
        )

    def admits(self, *, tenant_id: int, key_id: int) -> bool:
        """Whether this caller could ever match the rule (tasks and tags aside)."""
        return (not self.tenant_ids or tenant_id in self.tenant_ids) and (
            not self.key_ids or key_id in self.key_ids
        )


@dataclass(frozen=True)
class RoutingTable:
    catalog: Catalog
    rules: tuple[Rule, ...]

    def rule_for(self, *, model: str, tenant_id: int, key_id: int, task: str, tags: frozenset[str]) -> Rule | None:
        for rule in self.rules:
            if rule.matches(model=model, tenant_id=tenant_id, key_id=key_id, task=task, tags=tags):
                return rule
        return None


_tables: ConfigCache[RoutingTable] = ConfigCache("routing table")


async def routing_table_get() -> RoutingTable:
    return await _tables.get("table", routing_table_build)


def routing_table_build() -> RoutingTable:
    catalog = catalog_build()
    groups = {group.pk: group_config_build(group, catalog) for group in RouteGroup.objects.prefetch_related("deployments")}
    experiments = {
        experiment.rule_id: ExperimentConfig(
            name=experiment.name,
            sticky=experiment.sticky,
            variants=tuple(
                VariantConfig(
                    name=variant.name, weight=variant.weight,
                    group=groups[variant.group_id] if variant.group_id else None, model=variant.model,
                )
                for variant in experiment.variants.all() if variant.weight > 0
            ),
        )
        for experiment in Experiment.objects.filter(status=Experiment.Status.RUNNING).prefetch_related("variants")
    }
    rules = [
        Rule(
            name=rule.name,
            model=rule.model,
            tenant_ids=frozenset(t.pk for t in rule.tenants.all()),
            key_ids=frozenset(k.pk for k in rule.api_keys.all()),
            task=rule.task,
            tags=frozenset(rule.tags or ()),
            group=groups[rule.group_id],
            experiment=experiments.get(rule.pk),
        )
        for rule in RoutingRule.objects.filter(enabled=True).prefetch_related("tenants", "api_keys")
    ]
    return RoutingTable(catalog=catalog, rules=tuple(rules))


def group_config_build(group: RouteGroup, catalog: Catalog) -> GroupConfig:
    default = BreakerPolicy.default()
    deployments = []
    for row in group.deployments.all():
        base = catalog.by_model_id.get(row.provider_model_id) if row.enabled else None
        ready = catalog.with_key(base, key_id=row.provider_key_id) if base else None
        if ready is not None:
            deployments.append(replace(ready, priority=row.priority, weight=row.weight))
    return GroupConfig(
        name=group.name,
        strategy=group.strategy,
        retries=group.retries,
        attempt_timeout=group.attempt_timeout_seconds,
        total_timeout=group.total_timeout_seconds,
        policy=BreakerPolicy(
            failure_threshold=group.breaker_failure_threshold or default.failure_threshold,
            cooldown_seconds=group.breaker_cooldown_seconds or default.cooldown_seconds,
        ),
        deployments=tuple(deployments),
        best_rated=BestRatedSettings(
            lam=group.best_rated_lambda, min_share=group.best_rated_min_share,
            min_ratings=group.best_rated_min_ratings, metric=group.best_rated_metric,
        ),
    )
