from django.contrib import admin
from django.urls import include, path

from gateway_site.health import health

urlpatterns = [
    path("v1/", include("routing.urls")),
    path("admin/", admin.site.urls),
    path("dashboard/", include("accounting.urls")),
    path("playground/", include("routing.playground_urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("health", health, name="health"),
]

handler500 = "gateway_site.http.server_error"
