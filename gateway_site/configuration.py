"""Import and export of the gateway's configuration as YAML-shaped data.

`config_import` is an idempotent upsert: running it twice changes nothing the second time, and
nothing absent from the file is deleted. Secrets are accepted literally or as `env:VAR`, stored
encrypted, and never exported: `config_export` writes `env:VAR` references back, and leaves
literal secrets out.
"""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation

from django.db import transaction

from accounting.models import Tenant
from providers.models import Provider, ProviderModel
from providers.services import provider_key_upsert

PROVIDER_KEYS = {
    "name", "type", "api_base", "api_key", "enabled", "priority", "timeout_seconds", "models"
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
}
TENANT_KEYS = {"slug", "name", "is_active"}


class ConfigError(ValueError):
    """The configuration file is not of the expected shape; the message says where."""


@transaction.atomic
def config_import(data: object) -> dict[str, int]:
    if not isinstance(data, dict):
        raise ConfigError("The configuration must be a mapping with 'providers' and/or 'tenants'.")
    _known(data, {"providers", "tenants"}, "top level")
    counts = {"providers": 0, "models": 0, "provider_keys": 0, "tenants": 0}
    for index, item in enumerate(_list(data, "providers")):
        _provider_import(item, f"providers[{index}]", counts)
    for index, item in enumerate(_list(data, "tenants")):
        _tenant_import(item, f"tenants[{index}]")
        counts["tenants"] += 1
    return counts


def _provider_import(item: object, where: str, counts: dict[str, int]) -> None:
    item = _mapping(item, where)
    _known(item, PROVIDER_KEYS, where)
    name = _required_str(item, "name", where)
    wire_type = item.get("type", "openai")
    if wire_type not in Provider.WireType.values:
        raise ConfigError(f"{where}.type must be one of {', '.join(Provider.WireType.values)}.")
    provider, _ = Provider.objects.update_or_create(
        name=name,
        defaults={
            "type": wire_type,
            "api_base": _required_str(item, "api_base", where),
            "enabled": bool(item.get("enabled", True)),
            "priority": _optional_int(item, "priority", where) or 100,
            "timeout_seconds": _optional_seconds(item, "timeout_seconds", where),
        },
    )
    counts["providers"] += 1
    if item.get("api_key"):
        secret, source = _secret(item["api_key"], f"{where}.api_key")
        provider_key_upsert(provider=provider, name="default", secret=secret, source=source)
        counts["provider_keys"] += 1
    for index, model in enumerate(_list(item, "models")):
        _model_import(provider, model, f"{where}.models[{index}]")
        counts["models"] += 1


def _model_import(provider: Provider, item: object, where: str) -> None:
    item = _mapping(item, where)
    _known(item, MODEL_KEYS, where)
    alias = _required_str(item, "alias", where)
    mode = item.get("mode", "chat")
    if mode not in ProviderModel.Mode.values:
        raise ConfigError(f"{where}.mode must be one of {', '.join(ProviderModel.Mode.values)}.")
    ProviderModel.objects.update_or_create(
        provider=provider,
        alias=alias,
        defaults={
            "upstream_model": str(item.get("upstream") or alias),
            "mode": mode,
            "input_price_per_million": _price(item, "input_price_per_million", where),
            "output_price_per_million": _price(item, "output_price_per_million", where),
            "context_window": _optional_int(item, "context_window", where),
            "max_output_tokens": _optional_int(item, "max_output_tokens", where),
            "capabilities": list(item.get("capabilities") or []),
            "enabled": bool(item.get("enabled", True)),
        },
    )


def _tenant_import(item: object, where: str) -> None:
    item = _mapping(item, where)
    _known(item, TENANT_KEYS, where)
    slug = _required_str(item, "slug", where)
    defaults = {"name": str(item.get("name") or slug)}
    if "is_active" in item:
        defaults["is_active"] = bool(item["is_active"])
    Tenant.objects.update_or_create(slug=slug, defaults=defaults)


def config_export() -> dict:
    providers = []
    for provider in Provider.objects.prefetch_related("models", "keys"):
        entry: dict = {"name": provider.name, "type": provider.type, "api_base": provider.api_base}
        if not provider.enabled:
            entry["enabled"] = False
        if provider.priority != 100:
            entry["priority"] = provider.priority
        if provider.timeout_seconds:
            entry["timeout_seconds"] = provider.timeout_seconds
        sources = [key.source for key in provider.keys.all() if key.source.startswith("env:")]
        if sources:
            entry["api_key"] = sources[0]
        entry["models"] = [_model_export(model) for model in provider.models.all()]
        providers.append(entry)
    tenants = [
        {"slug": tenant.slug, "name": tenant.name, **({} if tenant.is_active else {"is_active": False})}
        for tenant in Tenant.objects.all()
    ]
    return {"providers": providers, "tenants": tenants}


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
    if not model.enabled:
        entry["enabled"] = False
    return entry


# --- shape checks -------------------------------------------------------------------------------
def _secret(value: object, where: str) -> tuple[str, str]:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string (the key itself, or env:VARIABLE).")
    if value.startswith("env:"):
        variable = value[4:]
        secret = os.environ.get(variable, "")
        if not secret:
            raise ConfigError(f"{where}: the environment variable {variable} is not set.")
        return secret, value
    return value, ""


def _mapping(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping.")
    return value


def _list(data: dict, key: str) -> list:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise ConfigError(f"'{key}' must be a list.")
    return value


def _known(item: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}.")


def _required_str(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key} is required and must be a string.")
    return value.strip()


def _price(item: dict, key: str, where: str) -> Decimal:
    try:
        price = Decimal(str(item.get(key, 0)))
    except InvalidOperation as exc:
        raise ConfigError(f"{where}.{key} must be a number.") from exc
    if not price.is_finite() or price < 0:
        raise ConfigError(f"{where}.{key} must be a number of at least 0.")
    return price


def _optional_seconds(item: dict, key: str, where: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 3600:
        raise ConfigError(f"{where}.{key} must be a number of seconds between 0 and 3600.")
    return float(value)


def _optional_int(item: dict, key: str, where: str) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a positive integer.")
    return value
