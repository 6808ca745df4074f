"""Import and export of the gateway's configuration as YAML-shaped data.

`config_import` is an idempotent upsert: running it twice changes nothing the second time, and
nothing absent from the file is deleted. Secrets are accepted literally or as `env:VAR`, stored
encrypted, and never exported: `config_export` writes `env:VAR` references back, and leaves
literal secrets out.
"""

from __future__ import annotations

from django.db import transaction

from accounting.configuration import (
    tenant_budget_import,
    tenant_limits_export,
    tenant_rate_limit_import,
)
from accounting.models import Tenant
from accounting.prices import IMAGE_PRICES_KEY, UNIT_PRICE_KEYS, CatalogueError, unit_prices_of, unit_prices_parse
from kernel.config_shape import (
    ConfigError,
    destination,
    known,
    list_of,
    mapping,
    optional_int,
    optional_seconds,
    price,
    required_str,
    secret,
)
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert
from routing.configuration import route_import, routes_export

PROVIDER_KEYS = {
    "name", "type", "api_base", "api_key", "enabled", "priority", "timeout_seconds", "models",
    "unsupported_params", "unsupported_param_policy",
}
MODEL_KEYS = {
    "alias",
    "upstream",
    "mode",
    "input_price_per_million",
    "output_price_per_million",
    "context_window",
    "max_output_tokens",
    "capabilities",
    "enabled",
    *UNIT_PRICE_KEYS,
    IMAGE_PRICES_KEY,
}
TENANT_KEYS = {"slug", "name", "is_active", "budget", "rate_limit"}


@transaction.atomic
def config_import(data: object) -> dict[str, int]:
    if not isinstance(data, dict):
        raise ConfigError("The configuration must be a mapping of providers, tenants and routes.")
    known(data, {"providers", "tenants", "routes"}, "top level")
    counts = {"providers": 0, "models": 0, "provider_keys": 0, "tenants": 0, "routes": 0}
    for index, item in enumerate(list_of(data, "providers")):
        _provider_import(item, f"providers[{index}]", counts)
    for index, item in enumerate(list_of(data, "tenants")):
        _tenant_import(item, f"tenants[{index}]")
        counts["tenants"] += 1
    seen: set[str] = set()
    for index, item in enumerate(list_of(data, "routes")):
        rule = route_import(item, f"routes[{index}]")
        if rule.name in seen:
            raise ConfigError(
                f"routes[{index}]: a second route named '{rule.name}'; give each route its own 'name'."
            )
        seen.add(rule.name)
        counts["routes"] += 1
    return counts


def _provider_import(item: object, where: str, counts: dict[str, int]) -> None:
    item = mapping(item, where)
    known(item, PROVIDER_KEYS, where)
    name = required_str(item, "name", where)
    wire_type = item.get("type", "openai")
    if wire_type not in Provider.WireType.values:
        raise ConfigError(f"{where}.type must be one of {', '.join(Provider.WireType.values)}.")
    provider, _ = Provider.objects.update_or_create(
        name=name,
        defaults={
            "type": wire_type,
            "api_base": destination(item, "api_base", where),
            "enabled": bool(item.get("enabled", True)),
            "priority": optional_int(item, "priority", where) or 100,
            "timeout_seconds": optional_seconds(item, "timeout_seconds", where),
            "unsupported_params": _names(item.get("unsupported_params"), f"{where}.unsupported_params"),
            "unsupported_param_policy": _policy(item.get("unsupported_param_policy"), where),
        },
    )
    counts["providers"] += 1
    if item.get("api_key"):
        plaintext, source = secret(item["api_key"], f"{where}.api_key")
        provider_key_upsert(provider=provider, name="default", secret=plaintext, source=source)
        counts["provider_keys"] += 1
    for index, model in enumerate(list_of(item, "models")):
        _model_import(provider, model, f"{where}.models[{index}]")
        counts["models"] += 1


def _model_import(provider: Provider, item: object, where: str) -> None:
    item = mapping(item, where)
    known(item, MODEL_KEYS, where)
    alias = required_str(item, "alias", where)
    mode = item.get("mode") or ""  # none: inferred when saved (accounting.prices.mode_infer)
    if mode and mode not in ProviderModel.Mode.values:
        raise ConfigError(f"{where}.mode must be one of {', '.join(ProviderModel.Mode.values)}.")
    try:
        units = unit_prices_parse(item, where)
    except CatalogueError as exc:
        raise ConfigError(str(exc)) from None
    ProviderModel.objects.update_or_create(
        provider=provider,
        alias=alias,
        defaults={
            **{key: units.get(key) for key in UNIT_PRICE_KEYS},
            IMAGE_PRICES_KEY: units.get(IMAGE_PRICES_KEY) or {},
            "upstream_model": str(item.get("upstream") or alias),
            "mode": mode,
            "input_price_per_million": price(item, "input_price_per_million", where),
            "output_price_per_million": price(item, "output_price_per_million", where),
            "context_window": optional_int(item, "context_window", where),
            "max_output_tokens": optional_int(item, "max_output_tokens", where),
            "capabilities": list(item.get("capabilities") or []),
            "enabled": bool(item.get("enabled", True)),
        },
    )


def _names(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where} must be a list of parameter names.")
    return sorted(set(value))


def _policy(value: object, where: str) -> str:
    if value in (None, "drop", "reject"):
        return value or "drop"
    raise ConfigError(f"{where}.unsupported_param_policy must be 'drop' or 'reject'.")


def _tenant_import(item: object, where: str) -> None:
    item = mapping(item, where)
    known(item, TENANT_KEYS, where)
    slug = required_str(item, "slug", where)
    defaults = {"name": str(item.get("name") or slug)}
    if "is_active" in item:
        defaults["is_active"] = bool(item["is_active"])
    tenant, _ = Tenant.objects.update_or_create(slug=slug, defaults=defaults)
    if item.get("budget") is not None:
        tenant_budget_import(tenant, item["budget"], f"{where}.budget")
    if item.get("rate_limit") is not None:
        tenant_rate_limit_import(tenant, item["rate_limit"], f"{where}.rate_limit")


def config_export() -> dict:
    providers = []
    for provider in Provider.objects.prefetch_related("models", "keys"):
        entry: dict = {"name": provider.name, "type": provider.type, "api_base": provider.api_base}
        if not provider.enabled:
            entry["enabled"] = False
        if provider.priority != 100:
            entry["priority"] = provider.priority
        if provider.unsupported_params:
            entry["unsupported_params"] = provider.unsupported_params
        if provider.unsupported_param_policy != "drop":
            entry["unsupported_param_policy"] = provider.unsupported_param_policy
        if provider.timeout_seconds:
            entry["timeout_seconds"] = provider.timeout_seconds
        sources = [key.source for key in provider.keys.all() if key.source.startswith("env:")]
        if sources:
            entry["api_key"] = sources[0]
        entry["models"] = [_model_export(model) for model in provider.models.all()]
        providers.append(entry)
    tenants = [
        {
            "slug": tenant.slug,
            "name": tenant.name,
            **({} if tenant.is_active else {"is_active": False}),
            **tenant_limits_export(tenant),
        }
        for tenant in Tenant.objects.all()
    ]
    return {"providers": providers, "tenants": tenants, "routes": routes_export()}


def _model_export(model: ProviderModel) -> dict:
    entry = {
        "alias": model.alias,
        "upstream": model.upstream_model,
        "mode": model.mode,
        "input_price_per_million": float(model.input_price_per_million),
        "output_price_per_million": float(model.output_price_per_million),
    }
    for name in ("context_window", "max_output_tokens"):
        if getattr(model, name) is not None:
            entry[name] = getattr(model, name)
    if model.capabilities:
        entry["capabilities"] = model.capabilities
    for key, value in unit_prices_of(model).items():
        entry[key] = float(value) if key in UNIT_PRICE_KEYS else value
    if not model.enabled:
        entry["enabled"] = False
    return entry
