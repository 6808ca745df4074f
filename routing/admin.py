from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounting.models import Tenant, TenantApiKey
from audit.admin import AuditedAdmin
from routing.explain import provider_health_rows, route_explain
from routing.experiments import (
    experiment_hand_to_best_rated,
    experiment_pause,
    experiment_promote,
    experiment_resume,
    experiment_results,
    experiment_stop,
)
from routing.models import Deployment, Experiment, ExperimentVariant, RouteGroup, RoutePosteriors, RoutingRule
from routing.replay import ReplayError, routing_replay

ENDED = (Experiment.Status.PROMOTED, Experiment.Status.HANDED_OVER)


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
    readonly_fields = ["replay_estimate"]
    fieldsets = [
        (None, {"fields": ["name", "strategy", "retries", "attempt_timeout_seconds", "total_timeout_seconds",
                           "breaker_failure_threshold", "breaker_cooldown_seconds"]}),
        ("best_rated", {
            "fields": ["best_rated_lambda", "best_rated_min_share", "best_rated_min_ratings", "best_rated_metric",
                       "replay_estimate"],
            "description": "How the best_rated strategy trades rating for cost and explores (docs/routing.md).",
        }),
    ]

    @admin.display(description="Offline replay (last 7 days, these settings)")
    def replay_estimate(self, obj: RouteGroup) -> str:
        """What the route's strategy would have given on its logged traffic (`routing.replay`)."""
        if obj.pk is None:
            return "-"
        try:
            lines = routing_replay(group=obj, days=7).lines()
        except ReplayError as exc:
            lines = [str(exc)]
        return format_html('<pre id="replay-estimate">{}</pre>', "\n".join(lines))

    def get_urls(self):
        health = self.admin_site.admin_view(self.health_view)
        return [path("health/", health, name="routing_provider_health"), *super().get_urls()]

    def health_view(self, request):
        """Provider health: every deployable (model, key) pair, its breaker and its recent health."""
        # admin_view checks is_staff only: the page needs the view permission of its admin's model.
        if not self.has_view_permission(request):
            raise PermissionDenied
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
        if not self.has_view_permission(request):
            raise PermissionDenied
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


class ExperimentVariantInline(admin.TabularInline):
    model = ExperimentVariant
    extra = 0
    fields = ["name", "weight", "group", "model"]


@admin.register(Experiment)
class ExperimentAdmin(AuditedAdmin):
    """Experiments split a rule's traffic; the results page compares the variants and promotes one."""

    list_display = ["name", "rule", "status", "sticky", "winner", "created_at", "results_link"]
    list_filter = ["status"]
    search_fields = ["name", "rule__name"]
    list_select_related = ["rule", "winner"]
    readonly_fields = ["winner"]
    inlines = [ExperimentVariantInline]
    actions = ["pause_selected", "resume_selected", "stop_selected"]

    @admin.display(description="results")
    def results_link(self, obj: Experiment) -> str:
        url = reverse("admin:routing_experiment_results", args=[obj.pk])
        return format_html('<a href="{}">Compare variants</a>', url)

    def get_urls(self):
        results = self.admin_site.admin_view(self.results_view)
        return [path("<int:pk>/results/", results, name="routing_experiment_results"), *super().get_urls()]

    @admin.action(description="Pause the selected experiments (their rules serve their own groups)")
    def pause_selected(self, request, queryset):
        for experiment in queryset.filter(status=Experiment.Status.RUNNING):
            experiment_pause(experiment)

    @admin.action(description="Resume the selected experiments")
    def resume_selected(self, request, queryset):
        for experiment in queryset.filter(status=Experiment.Status.PAUSED):
            try:
                experiment_resume(experiment)
            except IntegrityError:
                self.message_user(
                    request, f"{experiment.name}: another experiment already runs on its rule.", messages.ERROR
                )

    @admin.action(description="Stop the selected experiments")
    def stop_selected(self, request, queryset):
        for experiment in queryset.exclude(status__in=ENDED):
            experiment_stop(experiment)

    def results_view(self, request, pk: int):
        """The read-out: rating with a confidence interval, cost per request and latency per variant."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        experiment = Experiment.objects.select_related("rule", "winner").filter(pk=pk).first()
        if experiment is None:
            raise Http404("No such experiment.")
        if request.method == "POST":
            if not self.has_change_permission(request, experiment):
                raise PermissionDenied
            return self._act(request, experiment)
        results, verdict = experiment_results(experiment)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Experiment {experiment.name}",
            "experiment": experiment,
            "results": results,
            "verdict": verdict,
            "opts": self.model._meta,
            "can_change": self.has_change_permission(request, experiment),
            "over": experiment.status in ENDED,
        }
        return TemplateResponse(request, "admin/routing/experiment_results.html", context)

    def _act(self, request, experiment: Experiment):
        action = request.POST.get("action")
        if experiment.status in ENDED:
            self.message_user(request, f"This experiment is over ({experiment.get_status_display()}).", messages.ERROR)
        elif action == "pause" and experiment.status == Experiment.Status.RUNNING:
            experiment_pause(experiment)
        elif action == "resume" and experiment.status == Experiment.Status.PAUSED:
            experiment_resume(experiment)
        elif action == "stop":
            experiment_stop(experiment)
        elif action == "promote":
            variant = experiment.variants.filter(pk=request.POST.get("variant") or 0).first()
            if variant is None:
                self.message_user(request, "Choose a variant of this experiment to promote.", messages.ERROR)
            else:
                group = experiment_promote(experiment, variant)
                self.message_user(request, f"Promoted '{variant.name}': rule '{experiment.rule.name}' now uses "
                                           f"route group '{group.name}'.")
        elif action == "hand_over":
            group = experiment_hand_to_best_rated(experiment)
            self.message_user(request, f"Rule '{experiment.rule.name}' now uses route group '{group.name}' "
                                       f"(best_rated, every variant's deployments).")
        else:
            self.message_user(request, f"'{action}' is not possible while the experiment is {experiment.status}.",
                              messages.ERROR)
        return HttpResponseRedirect(reverse("admin:routing_experiment_results", args=[experiment.pk]))


@admin.register(RoutePosteriors)
class RoutePosteriorsAdmin(admin.ModelAdmin):
    """best_rated's posteriors as the beat last computed them; read-only (route explain shows them in use)."""

    list_display = ["group", "ratings", "computed_at", "rollups_at"]
    list_select_related = ["group"]
    readonly_fields = ["group", "data", "rollups_at", "computed_at"]

    @admin.display(description="ratings")
    def ratings(self, obj: RoutePosteriors) -> int:
        return obj.data.get("ratings", 0)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
