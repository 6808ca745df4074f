"""Routes in configuration files: one entry makes a route group and the rule that selects it.

```yaml
routes:
  - model: smart              # the alias clients send
    strategy: fallback        # fallback | round_robin | weighted | lowest_cost | lowest_latency | least_busy | best_rated
    best_rated: {lambda: 0, min_share: 0.05, min_ratings: 30, metric: ""}   # optional, best_rated's settings
    match: {task: summarization, tenants: [acme], keys: [sk-gw-AbC123], tags: [beta]}   # optional
    deployments:
      - {provider: fake-a, model: gpt-4o-mini, priority: 0, weight: 3}
      - {provider: fake-b, model: gpt-4o-mini, priority: 1, weight: 1}
```

An entry is identified by its `name` (default: the model, plus the task when it has one), so
importing the same file twice changes nothing; a route's deployments are replaced by the file's.
"""

from __future__ import annotations

import re

from django.db.models import Q

from accounting.models import Tenant, TenantApiKey
from kernel.config_shape import (
    INTEGER_MAX,
    ConfigError,
    known,
    list_of,
    mapping,
    optional_int,
    optional_seconds,
    required_str,
)
from providers.models import ProviderKey, ProviderModel
from routing.models import Deployment, RouteGroup, RoutingRule, Strategy

ROUTE_KEYS = {
    "model", "name", "strategy", "match", "priority", "retries", "attempt_timeout_seconds",
    "total_timeout_seconds", "breaker", "deployments", "enabled", "best_rated",
}
BEST_RATED_DEFAULTS = {"lambda": 0.0, "min_share": 0.05, "min_ratings": 30, "metric": ""}
MATCH_KEYS = {"task", "tenants", "keys", "tags"}
BREAKER_KEYS = {"failure_threshold", "cooldown_seconds"}
DEPLOYMENT_KEYS = {"provider", "model", "priority", "weight", "key", "enabled"}


def route_import(item: object, where: str) -> RoutingRule:
    item = mapping(item, where)
    known(item, ROUTE_KEYS, where)
    model = required_str(item, "model", where)
    match = mapping(item.get("match") or {}, f"{where}.match")
    known(match, MATCH_KEYS, f"{where}.match")
    name = item.get("name") or "-".join(filter(None, [model, match.get("task")]))
    group = _group_upsert(item, name=str(name), where=where)
    rule, _ = RoutingRule.objects.update_or_create(
        name=name,
        defaults={
            "model": model,
            "priority": _integer(item, "priority", where, default=100),
            "task": str(match.get("task") or ""),
            "tags": [str(tag) for tag in list_of(match, "tags")],
            "group": group,
            "enabled": bool(item.get("enabled", True)),
        },
    )
    rule.tenants.set(_tenants(list_of(match, "tenants"), f"{where}.match.tenants"))
    rule.api_keys.set(_keys(list_of(match, "keys"), f"{where}.match.keys"))
    return rule


def _group_upsert(item: dict, *, name: str, where: str) -> RouteGroup:
    strategy = item.get("strategy", Strategy.FALLBACK)
    if strategy not in Strategy.values:
        raise ConfigError(f"{where}.strategy must be one of {', '.join(Strategy.values)}.")
    breaker = mapping(item.get("breaker") or {}, f"{where}.breaker")
    known(breaker, BREAKER_KEYS, f"{where}.breaker")
    retries = item.get("retries", 1)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 10:
        raise ConfigError(f"{where}.retries must be an integer from 0 to 10.")
    group, _ = RouteGroup.objects.update_or_create(
        name=name,
        defaults={
            "strategy": strategy,
            "retries": retries,
            "attempt_timeout_seconds": optional_seconds(item, "attempt_timeout_seconds", where),
            "total_timeout_seconds": optional_seconds(item, "total_timeout_seconds", where) or 120.0,
            "breaker_failure_threshold": optional_int(
                breaker, "failure_threshold", f"{where}.breaker", maximum=32767  # PositiveSmallIntegerField
            ),
            "breaker_cooldown_seconds": optional_seconds(breaker, "cooldown_seconds", f"{where}.breaker"),
            **_best_rated(item, f"{where}.best_rated"),
        },
    )
    entries = list_of(item, "deployments")
    if not entries:
        raise ConfigError(f"{where}.deployments must list at least one deployment.")
    group.deployments.all().delete()
    for index, entry in enumerate(entries):
        _deployment_create(group, entry, f"{where}.deployments[{index}]")
    return group


def _best_rated(item: dict, where: str) -> dict:
    """best_rated's settings; the model's defaults for what the entry leaves out."""
    settings = mapping(item.get("best_rated") or {}, where)
    known(settings, set(BEST_RATED_DEFAULTS), where)
    settings = {**BEST_RATED_DEFAULTS, **settings}
    lam = settings["lambda"]
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not 0 <= lam < 1e12:
        raise ConfigError(f"{where}.lambda must be a number of 0 or more (rating points per dollar).")
    share = settings["min_share"]
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
        raise ConfigError(f"{where}.min_share must be a number from 0 to 1.")
    ratings = settings["min_ratings"]
    if not isinstance(ratings, int) or isinstance(ratings, bool) or not 0 <= ratings <= INTEGER_MAX:
        raise ConfigError(f"{where}.min_ratings must be an integer of at least 0.")
    metric = settings["metric"] or ""
    if not isinstance(metric, str) or not re.fullmatch(r"[-a-zA-Z0-9_]{0,64}", metric):
        raise ConfigError(f"{where}.metric must be a feedback metric's name (letters, digits, '-', '_').")
    return {"best_rated_lambda": float(lam), "best_rated_min_share": float(share),
            "best_rated_min_ratings": ratings, "best_rated_metric": metric}


def _deployment_create(group: RouteGroup, entry: object, where: str) -> Deployment:
    entry = mapping(entry, where)
    known(entry, DEPLOYMENT_KEYS, where)
    provider = required_str(entry, "provider", where)
    model_name = required_str(entry, "model", where)
    model = (
        ProviderModel.objects.filter(provider__name=provider)
        .filter(Q(alias=model_name) | Q(upstream_model=model_name))
        .order_by("pk")
        .first()
    )
    if model is None:
        raise ConfigError(f"{where}: provider '{provider}' has no model '{model_name}'.")
    key = None
    if entry.get("key"):
        key = ProviderKey.objects.filter(provider=model.provider, name=entry["key"]).first()
        if key is None:
            raise ConfigError(f"{where}: provider '{provider}' has no key named '{entry['key']}'.")
    priority = _integer(entry, "priority", where, default=0)
    weight = entry.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
        raise ConfigError(f"{where}.weight must be an integer of at least 0.")
    return Deployment.objects.create(
        group=group, provider_model=model, provider_key=key, priority=priority, weight=weight,
        enabled=bool(entry.get("enabled", True)),
    )


def _integer(item: dict, key: str, where: str, *, default: int) -> int:
    value = item.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be an integer.")
    return value


def _keys(prefixes: list, where: str) -> list[TenantApiKey]:
    """API keys by their visible prefix (never the secret)."""
    keys = []
    for prefix in prefixes:
        found = list(TenantApiKey.objects.filter(prefix=str(prefix))[:2])
        if len(found) != 1:
            raise ConfigError(f"{where}: {'no' if not found else 'more than one'} API key with prefix '{prefix}'.")
        keys.append(found[0])
    return keys


def _tenants(slugs: list, where: str) -> list[Tenant]:
    tenants = list(Tenant.objects.filter(slug__in=[str(slug) for slug in slugs]))
    missing = sorted({str(slug) for slug in slugs} - {tenant.slug for tenant in tenants})
    if missing:
        raise ConfigError(f"{where}: unknown tenant(s) {', '.join(missing)}.")
    return tenants


def routes_export() -> list[dict]:
    routes = []
    rules = RoutingRule.objects.select_related("group").prefetch_related(
        "tenants", "api_keys", "group__deployments__provider_model__provider",
        "group__deployments__provider_key",
    )
    for rule in rules:
        routes.append(_route_export(rule))
    return routes


def _route_export(rule: RoutingRule) -> dict:
    group = rule.group
    match = {
        key: value
        for key, value in {
            "task": rule.task,
            "tenants": sorted(t.slug for t in rule.tenants.all()),
            "keys": sorted(k.prefix for k in rule.api_keys.all()),
            "tags": rule.tags,
        }.items()
        if value
    }
    entry: dict = {"name": rule.name, "model": rule.model, "strategy": group.strategy}
    if match:
        entry["match"] = match
    entry.update({"priority": rule.priority, "retries": group.retries})
    for field in ("attempt_timeout_seconds", "total_timeout_seconds"):
        if getattr(group, field) is not None:
            entry[field] = getattr(group, field)
    breaker = {
        "failure_threshold": group.breaker_failure_threshold,
        "cooldown_seconds": group.breaker_cooldown_seconds,
    }
    if any(value is not None for value in breaker.values()):
        entry["breaker"] = {k: v for k, v in breaker.items() if v is not None}
    best_rated = {
        "lambda": group.best_rated_lambda, "min_share": group.best_rated_min_share,
        "min_ratings": group.best_rated_min_ratings, "metric": group.best_rated_metric,
    }
    if group.strategy == Strategy.BEST_RATED or best_rated != BEST_RATED_DEFAULTS:
        entry["best_rated"] = best_rated
    entry["deployments"] = [_deployment_export(d) for d in group.deployments.all()]
    if not rule.enabled:
        entry["enabled"] = False
    return entry


def _deployment_export(deployment: Deployment) -> dict:
    entry = {
        "provider": deployment.provider_model.provider.name,
        "model": deployment.provider_model.alias,
        "priority": deployment.priority,
        "weight": deployment.weight,
    }
    if deployment.provider_key is not None:
        entry["key"] = deployment.provider_key.name
    if not deployment.enabled:
        entry["enabled"] = False
    return entry
