"""What every operator API view shares: staff-token auth, model permissions per action
(`operators.permissions`), JSON only, the gateway's error shape, and an audit entry for every
write. The viewsets live with the app owning their model (`providers.api`, `accounting.api`,
`routing.operator_api`); `operators.urls` routes them.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, RestrictedError
from django.http import Http404
from rest_framework import exceptions, pagination, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from audit.services import audit_record, audit_update_action
from kernel import errors
from operators.authentication import StaffTokenAuthentication
from operators.permissions import OperatorPermission

# An id in a URL: at most 18 digits, so it always fits PostgreSQL's bigint.
ID_PATTERN = r"[0-9]{1,18}"


class OperatorPagination(pagination.LimitOffsetPagination):
    """`?limit=` (default 100, at most 1000) and `?offset=`, both kept within PostgreSQL's bigint."""

    max_limit = 1000
    max_offset = 10**15

    def get_offset(self, request) -> int:
        return min(super().get_offset(request), self.max_offset)


class Conflict(errors.GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
    error_class = "conflict"


def _first_error(detail, path: str = "") -> tuple[str, str]:
    """The first (field path, message) of a DRF validation error, e.g. ('deployments.0.weight', ...)."""
    if isinstance(detail, dict):
        for name, value in detail.items():
            return _first_error(value, f"{path}.{name}" if path else str(name))
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            nested = f"{path}.{index}" if path and isinstance(value, (dict, list)) else path
            return _first_error(value, nested)
    return path, str(detail)


def _gateway_error(exc) -> errors.GatewayError | None:
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_error(exc.detail)
        if param in ("", "non_field_errors"):
            return errors.InvalidRequest(message)
        return errors.InvalidRequest(f"{param}: {message}", param=param)
    if isinstance(exc, exceptions.ParseError):
        return errors.InvalidRequest(f"The request body is not valid JSON: {exc.detail}", code="invalid_json")
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        missing = isinstance(exc, exceptions.NotAuthenticated)
        return errors.AuthenticationFailed(
            "Missing staff token. Send it as 'Authorization: Bearer <token>'." if missing else str(exc.detail),
            code="missing_api_key" if missing else "invalid_api_key",
        )
    if isinstance(exc, exceptions.Throttled):  # too many failed staff tokens from this address
        return errors.AuthThrottled(str(exc.detail), headers={"retry-after": str(exc.wait or 1)})
    if isinstance(exc, exceptions.PermissionDenied):
        return errors.PermissionDenied(str(exc.detail), code="permission_denied")
    if isinstance(exc, (exceptions.NotFound, Http404)):
        return errors.NotFound("No such object.")
    if isinstance(exc, (ProtectedError, RestrictedError)):
        names = sorted({str(obj._meta.verbose_name) for obj in exc.args[1]})
        return Conflict(f"Other objects still depend on this one: {', '.join(names)}.")
    if isinstance(exc, IntegrityError):
        return Conflict("The change conflicts with an existing object (a name or scope already taken).")
    if isinstance(exc, DjangoValidationError):
        return errors.InvalidRequest("; ".join(exc.messages))
    if isinstance(exc, exceptions.APIException):
        error = errors.GatewayError(str(exc.detail))
        error.status, error.type, error.code = exc.status_code, "invalid_request_error", exc.default_code
        return error
    return None


def operator_exception_handler(exc, context):
    """DRF errors in the gateway's (OpenAI's) error shape; anything unknown stays a 500."""
    error = _gateway_error(exc)
    if error is None:
        return None
    response = Response(error.as_body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="operator-api"'
    if isinstance(exc, exceptions.MethodNotAllowed):
        response["Allow"] = ", ".join(context["view"].allowed_methods)
    return response


class OperatorViewSet(viewsets.ModelViewSet):
    """CRUD for staff: list, create, retrieve, update (PUT/PATCH), delete; every write audited.

    Each action needs its model permission (view, add, change, delete); a custom action names its
    verb in `action_verbs`, e.g. `{"revoke": "change"}` (see `operators.permissions`).

    Writes run in one transaction with their audit entry. Saving through the ORM raises the
    configuration generation in that transaction, as the admin's saves do
    (`kernel.config_generation`): every process's caches see the change.
    """

    authentication_classes = [StaffTokenAuthentication, SessionAuthentication]
    permission_classes = [OperatorPermission]
    action_verbs: dict[str, str] = {}
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    pagination_class = OperatorPagination
    lookup_value_regex = ID_PATTERN
    http_method_names = ["get", "post", "put", "patch", "delete"]
    schema_tags = ["operator API"]

    def get_exception_handler(self):
        return operator_exception_handler

    def audit(self, action: str, obj, *, changed_fields=()) -> None:
        audit_record(
            action=action, obj=obj, via="api", user=self.request.user, changed_fields=changed_fields,
            actor=self._actor(),
        )

    def _actor(self) -> str:
        token = self.request.auth
        name = self.request.user.get_username()
        return f"{name} (token {token.prefix}…)" if hasattr(token, "prefix") else name

    @transaction.atomic
    def perform_create(self, serializer) -> None:
        serializer.save()
        self.audit("created", serializer.instance, changed_fields=serializer.validated_data)

    @transaction.atomic
    def perform_update(self, serializer) -> None:
        changed = changed_fields(serializer.instance, serializer.validated_data)
        serializer.save()
        action = audit_update_action(obj=serializer.instance, changed_fields=changed)
        self.audit(action, serializer.instance, changed_fields=changed)

    @transaction.atomic
    def perform_destroy(self, instance) -> None:
        self.audit("deleted", instance)
        instance.delete()


def changed_fields(instance, data: dict) -> list[str]:
    """Names of the fields whose new value differs. What is not a plain field always counts: a
    `secret` (a rotation) or a reverse relation such as a route group's `deployments`."""
    fields = {field.name: field for field in instance._meta.get_fields()}
    changed = []
    for name, value in data.items():
        field = fields.get(name)
        if field is None or field.one_to_many:
            changed.append(name)
        elif field.many_to_many:
            if {obj.pk for obj in getattr(instance, name).all()} != {obj.pk for obj in value}:
                changed.append(name)
        elif getattr(instance, name) != value:
            changed.append(name)
    return changed
