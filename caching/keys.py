"""What a request asks of the cache, and the key of its answer.

Per request: the body's `cache` field (`true`, `false`, or an object with `ttl`, `max_age`,
`no_cache`, `no_store`) or a `Cache-Control` header (`no-store`, `no-cache`, `max-age=N`). The
key is a hash of the tenant, the route (rule and experiment variant) and the normalized request:
the model, the messages and every parameter that can change the answer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from kernel.errors import InvalidRequest

MAX_TTL_SECONDS = 30 * 86400
OPTION_KEYS = {"ttl", "max_age", "no_cache", "no_store"}
# Parameters that change how an answer is delivered or billed, not what it says.
DELIVERY_FIELDS = {"stream", "stream_options", "user", "store", "service_tier", "safety_identifier", "prompt_cache_key"}


@dataclass(frozen=True)
class CacheOptions:
    asked: bool = False  # the request wants caching even when it is not deterministic
    no_store: bool = False  # neither read nor write
    no_cache: bool = False  # do not answer from the cache, but keep the fresh answer
    ttl: int | None = None  # seconds to keep this answer (instead of the policy's)
    max_age: int | None = None  # accept only an answer at most this old


def cache_options_parse(*, body: dict, headers) -> CacheOptions:
    """The body's `cache` field wins over `Cache-Control`; bad values are a 400 naming them."""
    if "cache" in body and body["cache"] is not None:
        return _from_field(body["cache"])
    return _from_header(headers.get("cache-control") or "")


def _from_field(value: object) -> CacheOptions:
    if isinstance(value, bool):
        return CacheOptions(asked=value, no_store=not value)
    if not isinstance(value, dict):
        raise InvalidRequest("'cache' must be a boolean or an object.", param="cache")
    for name in value:
        if name not in OPTION_KEYS:
            raise InvalidRequest(
                f"Unknown cache option '{name}'; use {', '.join(sorted(OPTION_KEYS))}.", param=f"cache.{name}"
            )
    for name in ("no_cache", "no_store"):
        if not isinstance(value.get(name, False), bool):
            raise InvalidRequest(f"'cache.{name}' must be a boolean.", param=f"cache.{name}")
    return CacheOptions(
        asked=True,
        no_store=value.get("no_store", False),
        no_cache=value.get("no_cache", False),
        ttl=_seconds(value.get("ttl"), "cache.ttl", low=1),
        max_age=_seconds(value.get("max_age"), "cache.max_age", low=0),
    )


def _seconds(value: object, param: str, *, low: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_TTL_SECONDS:
        raise InvalidRequest(f"'{param}' must be an integer from {low} to {MAX_TTL_SECONDS} (seconds).", param=param)
    return value


def _from_header(header: str) -> CacheOptions:
    directives = [part.strip().lower() for part in header.split(",") if part.strip()]
    max_age = None
    for directive in directives:
        name, _, value = directive.partition("=")
        if name.strip() == "max-age":
            try:
                max_age = max(int(value.strip().strip('"')), 0)
            except ValueError:
                raise InvalidRequest("'Cache-Control: max-age' must be a number of seconds.", param="cache-control") from None
    return CacheOptions(
        asked=max_age is not None,
        no_store="no-store" in directives,
        no_cache="no-cache" in directives,
        max_age=max_age,
    )


def deterministic(payload: dict) -> bool:
    return payload.get("temperature") == 0


def cache_key(*, tenant_id: int, rule: str, variant: str, payload: dict) -> str:
    """sha256 of the tenant, the route and the request without its delivery-only parameters."""
    request = {name: value for name, value in payload.items() if name not in DELIVERY_FIELDS}
    material = json.dumps(
        {"tenant": tenant_id, "rule": rule, "variant": variant, "request": request},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def semantic_scope(*, tenant_id: int, rule: str, variant: str, payload: dict) -> str:
    """Requests whose answers may stand in for each other when their texts are alike: the same
    tenant, route, model and parameters; only the messages differ."""
    rest = {name: value for name, value in payload.items() if name != "messages"}
    return cache_key(tenant_id=tenant_id, rule=rule, variant=variant, payload=rest)


def request_text(payload: dict) -> str:
    """The text of the conversation, one line per message, for embedding."""
    lines = []
    for message in payload.get("messages") or ():
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if isinstance(content, str) and content:
            lines.append(f"{message.get('role')}: {content}")
    return "\n".join(lines)
