"""Django's page middleware, kept off the tenant API's hot path.

Django's own middleware (`MiddlewareMixin`) runs its hooks through `sync_to_async` when the stack
is async: two thread hops per middleware and request, and the first one starts a thread for the
request. The tenant API authenticates by key, is exempt from CSRF, has no session, user or
messages, and answers JSON, so none of that work is needed there. Each class here wraps one of
Django's middleware: on `TENANT_API_PATHS` it passes the request straight on (the security
middleware's header and redirect logic runs inline, without a thread hop); everywhere else
(admin, dashboards, playground, operator API with its admin-session login) the wrapped middleware
runs unchanged.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth.middleware import AuthenticationMiddleware as _Authentication
from django.contrib.messages.middleware import MessageMiddleware as _Messages
from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sessions.middleware import SessionMiddleware as _Session
from django.db import InterfaceError, OperationalError
from django.middleware.clickjacking import XFrameOptionsMiddleware as _XFrame
from django.middleware.common import CommonMiddleware as _Common
from django.middleware.csrf import CsrfViewMiddleware as _Csrf
from django.middleware.security import SecurityMiddleware as _Security
from django.utils.deprecation import MiddlewareMixin

from gateway_site.http import database_unavailable

# The routes a tenant key calls, with nothing of a browser's session: keep this list to them.
TENANT_API_PATHS = frozenset({
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/usage",
    "/v1/feedback",
})


class _TenantApiBypass:
    """Mixed into a Django middleware: pass tenant API requests straight on.

    A subclass of the wrapped middleware, so Django's checks (the admin's need for sessions,
    auth and messages) still see it. In async mode `MiddlewareMixin.__call__` returns the
    coroutine of its thread-hopping `__acall__`; here the coroutine of the next handler.
    """

    inline = False  # run process_request/process_response in the event loop (pure, no I/O)

    def __call__(self, request):
        if self.async_mode and request.path in TENANT_API_PATHS:
            return self._inline(request) if self.inline else self.get_response(request)
        return super().__call__(request)

    async def _inline(self, request):
        response = self.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.process_response(request, response)


class SecurityMiddleware(_TenantApiBypass, _Security):
    inline = True  # HTTPS redirect and security headers: header logic only


class SessionMiddleware(_TenantApiBypass, _Session):
    def process_response(self, request, response):
        """The session is saved after the view, out of `DatabaseUnavailableMiddleware`'s reach, and
        Django calls a save that the database refused `SessionInterrupted` (a 400 saying the session
        was deleted meanwhile): a database gone by then answers 503 too."""
        try:
            return super().process_response(request, response)
        except (OperationalError, InterfaceError):
            return database_unavailable(request)
        except SessionInterrupted as exc:
            if not _caused_by_database(exc):
                raise
            return database_unavailable(request)


def _caused_by_database(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, (OperationalError, InterfaceError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class CommonMiddleware(_TenantApiBypass, _Common):
    pass


class CsrfViewMiddleware(_TenantApiBypass, _Csrf):
    async def process_view(self, request, callback, callback_args, callback_kwargs):
        """Django calls a sync `process_view` through a thread hop on every request: this one
        hops only where CSRF applies (never on the tenant API, whose views are exempt)."""
        if request.path in TENANT_API_PATHS:
            return None
        return await sync_to_async(super().process_view)(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(_TenantApiBypass, _Authentication):
    pass


class MessageMiddleware(_TenantApiBypass, _Messages):
    pass


class XFrameOptionsMiddleware(_TenantApiBypass, _XFrame):
    pass


class DatabaseUnavailableMiddleware(_TenantApiBypass, MiddlewareMixin):
    """A view that finds the database unreachable answers 503 with `Retry-After` instead of a 500:
    the operator API (DRF hands on what its exception handler does not know), the dashboards, the
    admin, the playground (`gateway_site.http.database_unavailable`). The tenant API's views say
    so themselves (`allow_methods`); on their routes this passes the request straight on."""

    def process_exception(self, request, exception):
        if isinstance(exception, (OperationalError, InterfaceError)):
            return database_unavailable(request)
        return None
