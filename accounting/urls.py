from django.urls import path

from accounting import views
from feedback import views as feedback_views
from requestlogs import views as requestlogs_views

app_name = "dashboard"

urlpatterns = [
    path("", views.dashboard_index, name="index"),
    path("export.csv", views.dashboard_export_tenants, name="export-tenants"),
    path("feedback/", feedback_views.operator_feedback, name="feedback"),
    path("feedback/corrections.jsonl", feedback_views.operator_corrections, name="feedback-corrections"),
    path("requests/", requestlogs_views.operator_requests, name="requests"),
    path("requests/export.csv", requestlogs_views.operator_requests_export, name="requests-export"),
    path("<slug:slug>/", views.tenant_dashboard, name="tenant"),
    path("<slug:slug>/export.csv", views.tenant_export, name="export"),
    path("<slug:slug>/feedback/", feedback_views.tenant_feedback, name="tenant-feedback"),
    path("<slug:slug>/feedback/corrections.jsonl", feedback_views.tenant_corrections,
         name="tenant-feedback-corrections"),
    path("<slug:slug>/requests/", requestlogs_views.tenant_requests, name="tenant-requests"),
    path("<slug:slug>/requests/export.csv", requestlogs_views.tenant_requests_export, name="tenant-requests-export"),
    path("<slug:slug>/requests/<uuid:request_id>/", requestlogs_views.request_detail, name="request-detail"),
]
