"""The Files and Batches API's routes, part of the tenant API (`routing.urls.tenant_api_patterns`)."""

from django.urls import path

from batches import api
from batches import openapi as docs
from kernel.openapi import documented

batch_api_patterns = [
    path("v1/files", documented(api.files, docs.FilesDoc), name="files"),
    path("v1/files/<str:file_id>", documented(api.file_detail, docs.FileDetailDoc), name="file-detail"),
    path("v1/files/<str:file_id>/content", documented(api.file_content, docs.FileContentDoc), name="file-content"),
    path("v1/batches", documented(api.batches, docs.BatchesDoc), name="batches"),
    path("v1/batches/<str:batch_id>", documented(api.batch_detail, docs.BatchDetailDoc), name="batch-detail"),
    path("v1/batches/<str:batch_id>/cancel", documented(api.batch_cancel, docs.BatchCancelDoc),
         name="batch-cancel"),
]
