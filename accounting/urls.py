from django.urls import path

from accounting import views

app_name = "dashboard"

urlpatterns = [
    path("", views.dashboard_index, name="index"),
    path("export.csv", views.dashboard_export_tenants, name="export-tenants"),
    path("<slug:slug>/", views.tenant_dashboard, name="tenant"),
    path("<slug:slug>/export.csv", views.tenant_export, name="export"),
]
