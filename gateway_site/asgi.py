"""ASGI entry point: the tenant API's own app, then Django for HTTP; the WebSocket routes.

The tenant API's paths (`routing.urls.tenant_api_patterns`) are served by
`gateway_site.api_app.ApiApplication` in the event loop, without Django's per-request thread and
middleware; every other HTTP request (admin, dashboards, playground, operator API, health,
metrics, static files) goes on to Django's own ASGI handler.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()  # sets Django up: the imports below need the apps

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from gateway_site.api_app import ApiApplication  # noqa: E402
from gateway_site.static import StaticFilesApplication  # noqa: E402
from kernel.graceful import GracefulApplication  # noqa: E402
from routing.consumers import ChatConsumer  # noqa: E402
from routing.urls import tenant_api_parameterised, tenant_api_routes  # noqa: E402

http_application = ApiApplication(
    tenant_api_routes(), patterns=tenant_api_parameterised(), fallback=StaticFilesApplication(django_application)
)

# Sessions reach the consumer for the playground's logged-in users; API clients use their key.
websocket_application = AuthMiddlewareStack(URLRouter([path("v1/ws/chat", ChatConsumer.as_asgi())]))

# Outermost: what is in flight is counted, so that a worker's SIGTERM can drain it (graceful.py).
application = GracefulApplication(
    ProtocolTypeRouter({"http": http_application, "websocket": websocket_application})
)
