"""Reads for the cache: which policy applies to a request, cached in process for the hot path.

The policies are loaded in one sync step and kept while the configuration generation stays the
same (`kernel.config_generation`): a change is seen at once in the process that made it,
within `GATEWAY_CONFIG_CACHE_SECONDS` in the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from caching.models import CacheMode, CachePolicy
from kernel.config_cache import ConfigCache


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
_policies: ConfigCache[dict[tuple[int | None, str], Policy]] = ConfigCache("cache policies")


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
    policies = await _policies.get("policies", cache_policies_build)
    scopes = ((tenant_id, rule), (None, rule), (tenant_id, ""), (None, "")) if rule else (
        (tenant_id, ""), (None, ""))
    for scope in scopes:
        if scope in policies:
            return policies[scope]
    return Policy.default()
