"""System checks for what Django's own deploy checks cannot see (gateway_site/middleware.py)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register

REQUIRED_MIDDLEWARE = {
    "security.W001": "gateway_site.middleware.SecurityMiddleware",
    "security.W002": "gateway_site.middleware.XFrameOptionsMiddleware",
    "security.W003": "gateway_site.middleware.CsrfViewMiddleware",
}


@register(Tags.security, deploy=True)
def middleware_in_place(app_configs=None, **kwargs):
    """Django's W001-W003 are silenced because the middleware are subclasses of its own; the
    subclasses must then be there, or the protection is gone."""
    silenced = set(settings.SILENCED_SYSTEM_CHECKS)
    return [
        Error(f"{path} is missing from MIDDLEWARE ({check} is silenced on the assumption that it is there).",
              id="gateway_site.E001")
        for check, path in REQUIRED_MIDDLEWARE.items()
        if check in silenced and path not in settings.MIDDLEWARE
    ]
