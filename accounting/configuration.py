"""Tenants' budgets and rate limits in configuration files.

```yaml
tenants:
  - slug: acme
    budget: {amount_usd: 25.0, period: monthly, hard: true, alert_webhook: "http://127.0.0.1:9999/hook"}
    rate_limit: {rpm: 600, tpm: 200000}
```
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from accounting.models import Budget, Period, RateLimit, Tenant
from kernel.config_shape import (
    ConfigError,
    destination,
    known,
    mapping,
    optional_int,
    optional_seconds,
)

BUDGET_KEYS = {
    "amount_usd", "period", "hard", "alert_webhook", "alert_email", "alert_thresholds", "enabled",
}
RATE_LIMIT_KEYS = {"rpm", "tpm", "queue_seconds"}
DEFAULT_THRESHOLDS = [50, 80, 100]


def tenant_budget_import(tenant: Tenant, value: object, where: str) -> Budget:
    item = mapping(value, where)
    known(item, BUDGET_KEYS, where)
    try:
        amount = Decimal(str(item.get("amount_usd")))
    except InvalidOperation as exc:
        raise ConfigError(f"{where}.amount_usd must be a number.") from exc
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where}.amount_usd must be a number of at least 0.")
    period = item.get("period", Period.MONTHLY)
    if period not in Period.values:
        raise ConfigError(f"{where}.period must be one of {', '.join(Period.values)}.")
    thresholds = item.get("alert_thresholds", DEFAULT_THRESHOLDS)
    if not isinstance(thresholds, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds
    ):
        raise ConfigError(f"{where}.alert_thresholds must be a list of percentages.")
    budget, _ = Budget.objects.update_or_create(
        tenant=tenant, api_key=None, period=period,
        defaults={
            "amount_usd": amount,
            "hard": bool(item.get("hard", True)),
            "alert_webhook": destination(item, "alert_webhook", where) if item.get("alert_webhook") else "",
            "alert_email": str(item.get("alert_email") or ""),
            "alert_thresholds": sorted(set(thresholds)),
            "enabled": bool(item.get("enabled", True)),
        },
    )
    return budget


def tenant_rate_limit_import(tenant: Tenant, value: object, where: str) -> RateLimit:
    item = mapping(value, where)
    known(item, RATE_LIMIT_KEYS, where)
    limit, _ = RateLimit.objects.update_or_create(
        tenant=tenant, api_key=None,
        defaults={
            "rpm": optional_int(item, "rpm", where),
            "tpm": optional_int(item, "tpm", where),
            "queue_seconds": optional_seconds(item, "queue_seconds", where) or 0,
        },
    )
    return limit


def tenant_limits_export(tenant: Tenant) -> dict:
    entry: dict = {}
    budget = tenant.budgets.filter(api_key__isnull=True).order_by("pk").first()
    if budget is not None:
        entry["budget"] = {
            "amount_usd": float(budget.amount_usd),
            "period": budget.period,
            "hard": budget.hard,
            **({"alert_webhook": budget.alert_webhook} if budget.alert_webhook else {}),
            **({"alert_email": budget.alert_email} if budget.alert_email else {}),
            "alert_thresholds": budget.alert_thresholds,
            **({} if budget.enabled else {"enabled": False}),
        }
    limit = tenant.rate_limits.filter(api_key__isnull=True).first()
    if limit is not None:
        entry["rate_limit"] = {
            key: value
            for key, value in {"rpm": limit.rpm, "tpm": limit.tpm, "queue_seconds": limit.queue_seconds}.items()
            if value
        }
    return entry
