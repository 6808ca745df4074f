"""Authentication of tenant API keys on the hot path.

A key is looked up by its SHA-256 hash (the only form stored), and the result is kept in process
while the configuration generation stays the same (`kernel.config_generation`), so that a
busy key costs no query per request. Saving or deleting a key or tenant raises the generation:
the process that did it sees the change at once, the others within `GATEWAY_CONFIG_CACHE_SECONDS`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from accounting.models import TenantApiKey
from kernel.credentials import api_key_hash, bearer_token
from kernel.auth_throttle import auth_failure_count, auth_throttle_check
from kernel.config_cache import ConfigCache
from kernel.errors import AuthenticationFailed, PermissionDenied
from kernel.http import client_address

_MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class ApiKeyContext:
    key_id: int
    tenant_id: int
    tenant_slug: str
    allowed_models: frozenset[str]
    expires_at: datetime | None
    revoked: bool
    tenant_active: bool
    keep_content: bool = False  # the tenant keeps prompts and answers (Tenant.keep_content)

    def allows(self, alias: str) -> bool:
        return not self.allowed_models or alias in self.allowed_models


_cache: ConfigCache[ApiKeyContext | None] = ConfigCache("API keys", max_keys=_MAX_CACHED_KEYS)


async def api_key_authenticate(*, raw_key: str | None, client: str | None, door: str = "api") -> ApiKeyContext:
    """The key's context, or `AuthenticationFailed`. `client` is the caller's address: one that
    failed too often is refused (`AuthThrottled`) before its key is looked up, and a refused key
    counts against it (`kernel.auth_throttle`); None leaves both to the caller. `door` names
    the entry point in the metrics: api (HTTP), websocket."""
    if not raw_key:
        raise AuthenticationFailed(
            "Missing API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    if client is None:
        return await api_key_authenticate_hashed(hashed_key=api_key_hash(raw_key))
    auth_throttle_check(client=client, door=door)
    try:
        return await api_key_authenticate_hashed(hashed_key=api_key_hash(raw_key))
    except AuthenticationFailed as exc:
        raise await auth_failure_count(client=client, door=door, error=exc) from None


async def request_authenticate(request, *, door: str = "api") -> ApiKeyContext:
    """The tenant key an HTTP request carries (`Authorization: Bearer`, or `x-api-key` as
    Anthropic's clients send it), checked by `api_key_authenticate` with the caller's address for
    the throttle: how every HTTP route of the tenant API authenticates."""
    return await api_key_authenticate(raw_key=bearer_token(request.headers), client=client_address(request), door=door)


async def api_key_authenticate_hashed(*, hashed_key: str) -> ApiKeyContext:
    """`api_key_authenticate` for a holder of the key's hash, not the key: a WebSocket checks its
    key again on every request (revoked, expired, tenant deactivated) without keeping the secret."""
    context = await _lookup(hashed_key)
    if context is None or context.revoked or not context.tenant_active:
        raise AuthenticationFailed("Invalid API key.")
    if context.expires_at is not None and context.expires_at <= timezone.now():
        raise AuthenticationFailed("This API key has expired.", code="expired_api_key")
    return context


def model_authorize(*, context: ApiKeyContext, alias: str) -> None:
    if not context.allows(alias):
        raise PermissionDenied(f"This API key is not allowed to use the model '{alias}'.", param="model")


async def _lookup(hashed: str) -> ApiKeyContext | None:
    return await _cache.get(hashed, functools.partial(_load, hashed))


def _load(hashed: str) -> ApiKeyContext | None:
    key = TenantApiKey.objects.select_related("tenant").filter(hashed_key=hashed).first()
    context = None
    if key is not None:
        context = ApiKeyContext(
            key_id=key.pk,
            tenant_id=key.tenant_id,
            tenant_slug=key.tenant.slug,
            allowed_models=frozenset(key.allowed_models or ()),
            expires_at=key.expires_at,
            revoked=key.revoked,
            tenant_active=key.tenant.is_active,
            keep_content=key.tenant.keep_content,
        )
        # Touch last_used_at once per load (a change or the safety refresh), not per request.
        TenantApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return context
