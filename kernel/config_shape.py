"""Shape checks for configuration files: each raises ConfigError saying where the problem is."""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation

from kernel.upstream_urls import url_destination_problem


class ConfigError(ValueError):
    """The configuration file is not of the expected shape; the message says where."""


def secret(value: object, where: str) -> tuple[str, str]:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string (the key itself, or env:VARIABLE).")
    if value.startswith("env:"):
        variable = value[4:]
        secret = os.environ.get(variable, "")
        if not secret:
            raise ConfigError(f"{where}: the environment variable {variable} is not set.")
        return secret, value
    return value, ""


def mapping(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping.")
    return value


def list_of(data: dict, key: str) -> list:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise ConfigError(f"'{key}' must be a list.")
    return value


def known(item: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}.")


def required_str(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key} is required and must be a string.")
    return value.strip()


def destination(item: dict, key: str, where: str) -> str:
    """A URL the gateway will send requests to (a provider's api_base, a webhook): a string, and
    never a link-local or cloud metadata address (`kernel.upstream_urls`)."""
    value = required_str(item, key, where)
    if problem := url_destination_problem(value):
        raise ConfigError(f"{where}.{key}: {problem}")
    return value


def price(item: dict, key: str, where: str) -> Decimal:
    try:
        price = Decimal(str(item.get(key, 0)))
    except InvalidOperation as exc:
        raise ConfigError(f"{where}.{key} must be a number.") from exc
    if not price.is_finite() or price < 0:
        raise ConfigError(f"{where}.{key} must be a number of at least 0.")
    return price


def optional_seconds(item: dict, key: str, where: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 3600:
        raise ConfigError(f"{where}.{key} must be a number of seconds between 0 and 3600.")
    return float(value)


# The largest value of an integer column (Django's IntegerField and PositiveIntegerField on
# PostgreSQL): past it the write would fail with a DataError instead of a clear message.
INTEGER_MAX = 2_147_483_647


def optional_int(item: dict, key: str, where: str, *, maximum: int = INTEGER_MAX) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a positive integer.")
    if value > maximum:  # the column's range: a clear error, not a DataError
        raise ConfigError(f"{where}.{key} must be at most {maximum}.")
    return value
