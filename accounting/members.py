"""Tenant members (dashboard users) acting for their tenant, e.g. in the chat playground.

A WebSocket opened with a member's session checks that session again before every request
(`member_session_authenticate`): still logged in, the user still active, still a member of an
active tenant. Like an API key's lookup, the answer is kept in process while the configuration
generation stays the same: a logout, and a change of the user, a membership or a tenant raise it
(`kernel.config_generation`), seen at once in the process that made it and within
`GATEWAY_CONFIG_CACHE_SECONDS` in the others.
"""

from __future__ import annotations

import functools
from importlib import import_module

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.utils.crypto import constant_time_compare

from accounting.auth import ApiKeyContext
from accounting.models import TenantMembership
from kernel.config_cache import ConfigCache
from kernel.errors import AuthenticationFailed

_MAX_CACHED_SESSIONS = 10_000

_sessions: ConfigCache[ApiKeyContext | None] = ConfigCache("member sessions", max_keys=_MAX_CACHED_SESSIONS)


async def member_context(*, user) -> ApiKeyContext | None:
    """The tenant context of a logged-in member, as if it were a key with every model allowed.

    Its `key_id` is 0: usage is recorded for the tenant without a key, and only the tenant's own
    limits and budgets apply.
    """
    if user is None or not user.is_authenticated:
        return None
    return await sync_to_async(_membership_context)(user_id=user.pk)


async def member_session_context(*, session_key: str, user_id) -> ApiKeyContext | None:
    """`member_context` while the session `session_key` still logs in the user `user_id`; else None."""
    return await _sessions.get((session_key, user_id), functools.partial(_session_load, session_key, user_id))


async def member_session_authenticate(*, session_key: str, user_id) -> ApiKeyContext:
    context = await member_session_context(session_key=session_key, user_id=user_id)
    if context is None:
        raise AuthenticationFailed(
            "Your session has ended, or you are no longer a member of an active tenant; log in again.",
            code="session_expired",
        )
    return context


def _session_load(session_key: str, user_id) -> ApiKeyContext | None:
    if _session_user_id(session_key) != user_id:
        return None
    return _membership_context(user_id=user_id)


def _session_user_id(session_key: str):
    """The id of the user the session logs in now, checked as `django.contrib.auth.get_user` checks
    it (the session exists and has not expired, the user is active, the password is the one of the
    login), or None. Not `get_user` itself: it flushes a session that fails, or cycles its key
    under a fallback secret, and a check in the background must not change the browser's session;
    a session verified only by a fallback secret counts as ended here (the browser's next page
    gets it a new key anyway)."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    try:
        user_id = get_user_model()._meta.pk.to_python(store[SESSION_KEY])
        backend_path = store[BACKEND_SESSION_KEY]
    except KeyError:  # no such session, or logged out, or expired
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if user is None or not constant_time_compare(store.get(HASH_SESSION_KEY) or "", user.get_session_auth_hash()):
        return None
    return user.pk


def _membership_context(*, user_id) -> ApiKeyContext | None:
    membership = TenantMembership.objects.select_related("tenant").filter(user_id=user_id).first()
    if membership is None or not membership.tenant.is_active:
        return None
    return ApiKeyContext(
        key_id=0,
        tenant_id=membership.tenant_id,
        tenant_slug=membership.tenant.slug,
        allowed_models=frozenset(),
        expires_at=None,
        revoked=False,
        tenant_active=True,
        keep_content=membership.tenant.keep_content,
    )
