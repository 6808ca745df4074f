from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

from gateway_site.front_door import front_door
from gateway_site.health import health, ready
from gateway_site.health_schema import MetricsDoc, ReadyDoc
from gateway_site.metrics_scrape import metrics_view
from kernel.openapi import HealthDoc, documented
from gateway_site.openapi_views import SchemaView
from routing.urls import not_found_patterns, tenant_api_patterns

urlpatterns = [
    path("", front_door, name="front-door"),
    # The tenant API, served before Django by its own ASGI app (gateway_site/asgi.py): listed here
    # for the OpenAPI schema and reverse(), and for Django's test client.
    *tenant_api_patterns,
    path("v1/", include("routing.urls")),
    path("v1/", include("operators.urls")),
    path("v1/", include(not_found_patterns)),
    path("admin/", admin.site.urls),
    path("dashboard/", include("accounting.urls")),
    path("playground/", include("routing.playground_urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("health", documented(health, HealthDoc), name="health"),
    path("ready", documented(ready, ReadyDoc), name="ready"),
    path("metrics", documented(metrics_view, MetricsDoc), name="metrics"),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]

handler500 = "kernel.http.server_error"
