"""`Authorization: Bearer <staff token>` for the operator API (DRF authentication class)."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounting.auth import bearer_token
from accounting.services import api_key_hash
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
        token = StaffToken.objects.select_related("user").filter(hashed_key=api_key_hash(raw)).first()
        if token is None or token.revoked or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid staff token.")
        StaffToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="operator-api"'


class StaffTokenScheme(OpenApiAuthenticationExtension):
    target_class = StaffTokenAuthentication
    name = "StaffToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A staff token (`sk-op-…`, `manage.py create_staff_token USER`).",
        }
