"""The gateway's error hierarchy, and the one place it turns into an HTTP response.

Every error a client can see is a `GatewayError`. Its body follows OpenAI's error object
(https://platform.openai.com/docs/guides/error-codes): `{"error": {"message", "type", "param",
"code"}}`, which the official SDKs parse into their own exception classes by status code.
`error_class` is the stable name recorded on the UsageRecord and used by routing.
"""

from __future__ import annotations

import math

from django.http import JsonResponse

from kernel.redact import secrets_redact


class GatewayError(Exception):
    status = 500
    type = "api_error"
    code: str | None = None
    error_class = "internal"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def as_body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    error_class = "authentication"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"
    error_class = "permission"


class AuthThrottled(GatewayError):
    """Too many failed authentications from the client's address (`kernel.auth_throttle`)."""

    status = 429
    type = "rate_limit_error"
    code = "too_many_auth_failures"
    error_class = "auth_throttled"


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"
    error_class = "invalid_request"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    error_class = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    error_class = "request_too_large"


class NoDeploymentAvailable(GatewayError):
    status = 503
    type = "api_error"
    code = "no_deployment_available"
    error_class = "no_deployment"


class DatabaseUnavailable(GatewayError):
    """The database does not answer (down, unreachable, out of connections): a clear 503, never a 500.
    Nothing is half-written: each write is one transaction, and a request refused here reserved nothing."""

    status = 503
    type = "api_error"
    code = "database_unavailable"
    error_class = "database_unavailable"

    def __init__(self, message: str = "The gateway's database is unavailable; retry shortly.", **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", "1")


# Provider error classes, shared by every adapter: (HTTP status shown to the client, retryable).
PROVIDER_ERROR_CLASSES: dict[str, tuple[int, bool]] = {
    "rate_limited": (429, True),
    "context_length_exceeded": (400, False),
    "content_filtered": (400, False),
    "auth": (502, False),
    "bad_request": (400, False),
    "upstream_server": (502, True),
    "overloaded": (503, True),
    "timeout": (504, True),
    "connection": (502, True),
}


class ProviderError(GatewayError):
    """A failure of an upstream provider, already classified by its adapter.

    `retryable` tells routing whether another attempt (or another deployment) may succeed;
    errors caused by the tenant's own request are never retried.

    The message often quotes the upstream, which may quote the key it was sent: it is scrubbed
    here (`secret`, the provider key of the call, and anything shaped like a key), so the tenant's
    answer, the UsageRecord, health's `last_error` and the logs only ever see the scrubbed text.
    """

    type = "api_error"

    def __init__(
        self,
        message: str,
        *,
        error_class: str,
        provider: str = "",
        upstream_status: int | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        secret: str = "",
    ) -> None:
        status, retryable = PROVIDER_ERROR_CLASSES[error_class]
        headers = {"retry-after": str(math.ceil(retry_after))} if retry_after else {}
        message = secrets_redact(message, secret=secret)
        super().__init__(message, param=param, code=error_class, headers=headers)
        self.error_class = error_class
        self.status = status
        self.retryable = retryable
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        if status == 400:
            self.type = "invalid_request_error"
        elif status == 429:
            self.type = "rate_limit_error"


def error_response(exc: GatewayError) -> JsonResponse:
    response = JsonResponse(exc.as_body(), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response
