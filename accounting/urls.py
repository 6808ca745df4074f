from django.urls import path

from accounting import views
from accounting.selfservice import views as selfservice
from batches import views as batch_views
from feedback import views as feedback_views
from requestlogs import views as requestlogs_views

app_name = "dashboard"

urlpatterns = [
    path("", views.dashboard_index, name="index"),
    path("export.csv", views.dashboard_export_tenants, name="export-tenants"),
    path("feedback/", feedback_views.operator_feedback, name="feedback"),
    path("batches/", batch_views.operator_batches, name="batches"),
    path("feedback/corrections.jsonl", feedback_views.operator_corrections, name="feedback-corrections"),
    path("requests/", requestlogs_views.operator_requests, name="requests"),
    path("requests/export.csv", requestlogs_views.operator_requests_export, name="requests-export"),
    path("<slug:slug>/", views.tenant_dashboard, name="tenant"),
    path("<slug:slug>/export.csv", views.tenant_export, name="export"),
    path("<slug:slug>/keys/", selfservice.keys, name="keys"),
    path("<slug:slug>/keys/<int:key_id>/", selfservice.key_detail, name="key"),
    path("<slug:slug>/keys/<int:key_id>/revoke", selfservice.key_revoke, name="key-revoke"),
    path("<slug:slug>/keys/<int:key_id>/rotate", selfservice.key_rotate, name="key-rotate"),
    path("<slug:slug>/members/", selfservice.members, name="members"),
    path("<slug:slug>/members/<int:member_id>/role", selfservice.member_role, name="member-role"),
    path("<slug:slug>/members/<int:member_id>/remove", selfservice.member_remove, name="member-remove"),
    path("<slug:slug>/settings/", selfservice.tenant_settings, name="settings"),
    path("<slug:slug>/feedback/", feedback_views.tenant_feedback, name="tenant-feedback"),
    path("<slug:slug>/batches/", batch_views.tenant_batches, name="tenant-batches"),
    path("<slug:slug>/feedback/corrections.jsonl", feedback_views.tenant_corrections,
         name="tenant-feedback-corrections"),
    path("<slug:slug>/requests/", requestlogs_views.tenant_requests, name="tenant-requests"),
    path("<slug:slug>/requests/export.csv", requestlogs_views.tenant_requests_export, name="tenant-requests-export"),
    path("<slug:slug>/requests/<uuid:request_id>/", requestlogs_views.request_detail, name="request-detail"),
]
