from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.views.decorators.http import require_POST

from accounting.models import Tenant
from caching.models import CachePolicy
from caching.services import cache_clear, cache_stats


@admin.register(CachePolicy)
class CachePolicyAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "rule", "mode", "ttl_seconds", "semantic_threshold", "embedding_model", "enabled"]
    list_filter = ["mode", "enabled"]
    search_fields = ["name", "tenant__slug", "rule__name"]
    list_select_related = ["tenant", "rule"]
    change_list_template = "admin/caching/cachepolicy/change_list.html"

    def get_urls(self):
        stats = self.admin_site.admin_view(self.stats_view)
        clear = self.admin_site.admin_view(require_POST(self.clear_view))
        return [
            path("stats/", stats, name="caching_cache_stats"),
            path("stats/<int:tenant_id>/clear/", clear, name="caching_cache_clear"),
            *super().get_urls(),
        ]

    def stats_view(self, request):
        """Per tenant: entries, hits, misses, hit rate and saved cost, with a clear button."""
        # admin_view checks is_staff only; every tenant's figures need the view permission.
        if not self.has_view_permission(request):
            raise PermissionDenied
        rows = [(tenant, async_to_sync(cache_stats)(tenant_id=tenant.pk)) for tenant in Tenant.objects.all()]
        context = {
            **self.admin_site.each_context(request),
            "title": "Response cache",
            "rows": rows,
            "opts": self.model._meta,
            "can_clear": self.has_change_permission(request),
        }
        return TemplateResponse(request, "admin/caching/stats.html", context)

    def clear_view(self, request, tenant_id: int):
        if not self.has_change_permission(request):
            raise PermissionDenied
        tenant = get_object_or_404(Tenant, pk=tenant_id)
        cleared = async_to_sync(cache_clear)(tenant_id=tenant.pk)
        messages.success(
            request,
            f"Cleared {cleared['entries']} cached answer(s) and {cleared['semantic_entries']} semantic entr(ies) of {tenant}.",
        )
        return redirect("admin:caching_cache_stats")
