"""`Authorization: Bearer <staff token>` for the operator API (DRF authentication class)."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from kernel.credentials import api_key_hash, bearer_token
from kernel.auth_throttle import auth_failure_count_sync, auth_throttle_check
from kernel.errors import AuthThrottled
from kernel.http import client_address
from operators.models import StaffToken


class StaffTokenAuthentication(authentication.BaseAuthentication):
    """A staff token, looked up by its hash. Tenant API keys are not staff tokens: they get a 401.

    Operator calls are rare next to completions, so there is no cache: a revoked token or a user
    who lost staff status is refused on the very next call.
    """

    def authenticate(self, request):
        raw = bearer_token(request.headers)
        if not raw:
            return None
        # An address that failed too often is refused before the lookup (kernel/auth_throttle.py).
        client = client_address(request)
        try:
            auth_throttle_check(client=client, door="operator")
        except AuthThrottled as exc:
            raise _throttled(exc) from None
        token = StaffToken.objects.select_related("user").filter(hashed_key=api_key_hash(raw)).first()
        if token is None or token.revoked or not token.user.is_active:
            refused = exceptions.AuthenticationFailed("Invalid staff token.")
            error = auth_failure_count_sync(client=client, door="operator", error=refused)
            raise _throttled(error) if isinstance(error, AuthThrottled) else refused
        StaffToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="operator-api"'


def _throttled(exc: AuthThrottled) -> exceptions.Throttled:
    """DRF's 429, which the operator API answers in the gateway's error shape (`operators.api`)."""
    throttled = exceptions.Throttled(detail=exc.message)
    throttled.wait = int(exc.headers["retry-after"])  # set after: DRF would add its own sentence
    return throttled


class StaffTokenScheme(OpenApiAuthenticationExtension):
    target_class = StaffTokenAuthentication
    name = "StaffToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A staff token (`sk-op-…`, `manage.py create_staff_token USER`).",
        }
