"""Batches and their files in the admin: to look at, progress and cost included; changes go
through the API (cancel) only."""

from django.contrib import admin

from batches.models import Batch, BatchFile
from batches.selectors import batch_cost


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Batch)
class BatchAdmin(ReadOnly):
    list_display = ["id", "tenant", "endpoint", "status", "progress", "failed", "created_at"]
    list_filter = ["status", "endpoint", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["id", "input_file_key"]
    readonly_fields = ["cost_so_far"]
    show_full_result_count = False

    @admin.display(description="lines done")
    def progress(self, batch: Batch) -> str:
        return f"{batch.completed + batch.failed} / {batch.total}"

    @admin.display(description="cost so far (USD)")
    def cost_so_far(self, batch: Batch) -> str:
        return f"{batch_cost(batch):.6f}"


@admin.register(BatchFile)
class BatchFileAdmin(ReadOnly):
    list_display = ["id", "tenant", "purpose", "filename", "bytes", "lines", "created_at"]
    list_filter = ["purpose", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["id", "filename"]
    show_full_result_count = False
