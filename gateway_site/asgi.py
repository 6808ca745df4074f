"""ASGI entry point: the Django HTTP app first, then the WebSocket routes."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

import django  # noqa: E402

django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application does, before its handler

from django.conf import settings  # noqa: E402

from gateway_site.asgi_handler import GatewayASGIHandler  # noqa: E402

http_application = GatewayASGIHandler()

if settings.GATEWAY_SERVE_STATIC:
    from gateway_site.static import StaticFilesApplication  # noqa: E402

    http_application = StaticFilesApplication(http_application)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from gateway_site.graceful import GracefulApplication  # noqa: E402
from routing.consumers import ChatConsumer  # noqa: E402

# Sessions reach the consumer for the playground's logged-in users; API clients use their key.
websocket_application = AuthMiddlewareStack(URLRouter([path("v1/ws/chat", ChatConsumer.as_asgi())]))

# Outermost: what is in flight is counted, so that a worker's SIGTERM can drain it (graceful.py).
application = GracefulApplication(
    ProtocolTypeRouter({"http": http_application, "websocket": websocket_application})
)
