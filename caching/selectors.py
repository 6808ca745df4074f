"""Reads for the cache: which policy applies to a request, cached in process for the hot path.

The policies are loaded in one sync step and kept for `GATEWAY_CONFIG_CACHE_SECONDS`; saving or
deleting one in the admin clears them at once in that process (see `caching.apps`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings

from caching.models import CacheMode, CachePolicy


@dataclass(frozen=True)
class Policy:
    mode: str
    ttl_seconds: int
    semantic_threshold: float = 0.95
    embedding_model: str = ""

    @classmethod
    def default(cls) -> Policy:
        return cls(mode=CacheMode.DETERMINISTIC, ttl_seconds=settings.GATEWAY_CACHE_TTL_SECONDS)


# (tenant id or None, rule name or "") -> Policy
_state: dict[str, tuple[float, dict[tuple[int | None, str], Policy]]] = {}


def cache_policies_clear() -> None:
    _state.clear()


def cache_policies_build() -> dict[tuple[int | None, str], Policy]:
    return {
        (row.tenant_id, row.rule.name if row.rule_id else ""): Policy(
            mode=row.mode,
            ttl_seconds=row.ttl_seconds,
            semantic_threshold=float(row.semantic_threshold),
            embedding_model=row.embedding_model,
        )
        for row in CachePolicy.objects.filter(enabled=True).select_related("rule")
    }


async def cache_policy_for(*, tenant_id: int, rule: str) -> Policy:
    """The most specific policy: tenant and rule, rule, tenant, global, else the default."""
    cached = _state.get("policies")
    if cached is None or cached[0] <= time.monotonic():
        policies = await sync_to_async(cache_policies_build)()
        cached = _state["policies"] = (time.monotonic() + settings.GATEWAY_CONFIG_CACHE_SECONDS, policies)
    policies = cached[1]
    scopes = ((tenant_id, rule), (None, rule), (tenant_id, ""), (None, "")) if rule else (
        (tenant_id, ""), (None, ""))
    for scope in scopes:
        if scope in policies:
            return policies[scope]
    return Policy.default()
