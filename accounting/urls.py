from django.urls import path

from accounting import views
from batches import views as batch_views
from feedback import views as feedback_views

app_name = "dashboard"

urlpatterns = [
    path("", views.dashboard_index, name="index"),
    path("export.csv", views.dashboard_export_tenants, name="export-tenants"),
    path("feedback/", feedback_views.operator_feedback, name="feedback"),
    path("batches/", batch_views.operator_batches, name="batches"),
    path("feedback/corrections.jsonl", feedback_views.operator_corrections, name="feedback-corrections"),
    path("<slug:slug>/", views.tenant_dashboard, name="tenant"),
    path("<slug:slug>/export.csv", views.tenant_export, name="export"),
    path("<slug:slug>/feedback/", feedback_views.tenant_feedback, name="tenant-feedback"),
    path("<slug:slug>/batches/", batch_views.tenant_batches, name="tenant-batches"),
    path("<slug:slug>/feedback/corrections.jsonl", feedback_views.tenant_corrections,
         name="tenant-feedback-corrections"),
]
