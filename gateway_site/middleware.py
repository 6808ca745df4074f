"""Middleware of Django's pages and the operator API (the tenant API has its own ASGI app,
`gateway_site.api_app`, and none of these): a database found unreachable answers 503, not 500."""

from __future__ import annotations

from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.db import InterfaceError, OperationalError
from django.utils.deprecation import MiddlewareMixin

from kernel.http import database_unavailable


class SessionMiddleware(DjangoSessionMiddleware):
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


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A view that finds the database unreachable answers 503 with `Retry-After` instead of a 500:
    the operator API (DRF hands on what its exception handler does not know), the dashboards, the
    admin, the playground (`kernel.http.database_unavailable`). The tenant API's views say
    so themselves (`allow_methods`)."""

    def process_exception(self, request, exception):
        if isinstance(exception, (OperationalError, InterfaceError)):
            return database_unavailable(request)
        return None
