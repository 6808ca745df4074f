from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path

from accounting.models import Tenant, TenantApiKey
from audit.admin import AuditedAdmin
from routing.explain import provider_health_rows, route_explain
from routing.models import Deployment, RouteGroup, RoutingRule


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 0
    fields = ["provider_model", "provider_key", "priority", "weight", "enabled"]
    autocomplete_fields = ["provider_model"]


@admin.register(RouteGroup)
class RouteGroupAdmin(AuditedAdmin):
    list_display = ["name", "strategy", "retries", "total_timeout_seconds", "updated_at"]
    list_filter = ["strategy"]
    search_fields = ["name"]
    inlines = [DeploymentInline]
    change_list_template = "admin/routing/routegroup/change_list.html"

    def get_urls(self):
        health = self.admin_site.admin_view(self.health_view)
        return [path("health/", health, name="routing_provider_health"), *super().get_urls()]

    def health_view(self, request):
        """Provider health: every deployable (model, key) pair, its breaker and its recent health."""
        context = {
            **self.admin_site.each_context(request),
            "title": "Provider health",
            "rows": provider_health_rows(),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/routing/health.html", context)


class ExplainForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.all())
    model = forms.CharField(max_length=200)
    task = forms.CharField(max_length=100, required=False)
    tags = forms.CharField(max_length=200, required=False, help_text="Comma-separated.")
    api_key = forms.ModelChoiceField(queryset=TenantApiKey.objects.select_related("tenant"), required=False)


@admin.register(RoutingRule)
class RoutingRuleAdmin(AuditedAdmin):
    list_display = ["name", "priority", "model", "task", "group", "enabled"]
    list_filter = ["enabled", "group"]
    search_fields = ["name", "model", "task"]
    filter_horizontal = ["tenants", "api_keys"]
    list_select_related = ["group"]
    change_list_template = "admin/routing/routingrule/change_list.html"

    def get_urls(self):
        explain = self.admin_site.admin_view(self.explain_view)
        return [path("explain/", explain, name="routing_routingrule_explain"), *super().get_urls()]

    def explain_view(self, request):
        """Dry run: the deployments a request would try, in order, with breaker and health."""
        form = ExplainForm(request.GET or None)
        explanation = None
        if form.is_valid():
            data = form.cleaned_data
            explanation = route_explain(
                tenant=data["tenant"], model=data["model"], task=data["task"], api_key=data["api_key"],
                tags=frozenset(t.strip() for t in data["tags"].split(",") if t.strip()),
            )
        context = {
            **self.admin_site.each_context(request),
            "title": "Route explain (dry run)",
            "form": form,
            "explanation": explanation,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/routing/explain.html", context)
