from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from kernel.admin import ReadOnlyAdmin
from guardrails.models import GuardrailEvent, GuardrailPolicy, GuardrailRule


class GuardrailRuleInline(admin.TabularInline):
    model = GuardrailRule
    extra = 1
    fields = ["kind", "direction", "action", "pattern", "limit", "label", "enabled"]


@admin.register(GuardrailPolicy)
class GuardrailPolicyAdmin(admin.ModelAdmin):
    list_display = ["__str__", "tenant", "enabled", "inherit_default", "rule_count", "updated_at"]
    list_filter = ["enabled"]
    list_select_related = ["tenant"]
    search_fields = ["name", "tenant__slug"]
    autocomplete_fields = ["tenant"]
    inlines = [GuardrailRuleInline]

    @admin.display(description="Rules")
    def rule_count(self, obj: GuardrailPolicy) -> int:
        return obj.rules.count()


@admin.register(GuardrailEvent)
class GuardrailEventAdmin(ReadOnlyAdmin):
    """Read-only: events are written by the gateway, one per rule that matched a request."""

    deletable = False

    list_display = ["created_at", "tenant", "kind", "action", "direction", "location", "snippet", "usage_record"]
    list_filter = ["tenant", "kind", "action", "direction"]
    list_select_related = ["tenant", "rule"]
    search_fields = ["request_id", "response_id"]
    date_hierarchy = "created_at"
    show_full_result_count = False

    @admin.display(description="Request")
    def usage_record(self, obj: GuardrailEvent) -> str:
        url = reverse("admin:accounting_usagerecord_changelist") + f"?q={obj.request_id}"
        return format_html('<a href="{}">{}</a>', url, str(obj.request_id)[:8])

