"""ASGI entry point: the Django HTTP app first, then WebSocket routes (none yet)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

http_application = get_asgi_application()

if settings.GATEWAY_SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

    http_application = ASGIStaticFilesHandler(http_application)

from channels.routing import ProtocolTypeRouter  # noqa: E402

application = ProtocolTypeRouter({"http": http_application})
