import json

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from accounting.models import (
    Budget,
    BudgetAlert,
    BudgetPeriod,
    RateLimit,
    StoredResponse,
    Tenant,
    TenantApiKey,
    TenantMembership,
    UsageRecord,
)
from accounting.services import api_key_create, api_key_revoke
from audit.admin import AuditedAdmin
from audit.services import audit_record


@admin.register(Tenant)
class TenantAdmin(AuditedAdmin):
    list_display = ["slug", "name", "is_active", "created_at"]
    search_fields = ["slug", "name"]
    list_filter = ["is_active"]


class TenantApiKeyForm(forms.ModelForm):
    allowed_models = forms.CharField(
        required=False,
        help_text="Comma-separated model aliases this key may use; empty allows every model.",
    )

    class Meta:
        model = TenantApiKey
        fields = ["tenant", "name", "allowed_models", "expires_at", "revoked"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["allowed_models"] = ", ".join(self.instance.allowed_models or [])

    def clean_allowed_models(self) -> list[str]:
        raw = self.cleaned_data.get("allowed_models") or ""
        return sorted({item.strip() for item in raw.split(",") if item.strip()})


@admin.register(TenantApiKey)
class TenantApiKeyAdmin(AuditedAdmin):
    form = TenantApiKeyForm
    list_display = ["prefix", "tenant", "name", "revoked", "expires_at", "last_used_at", "created_at"]
    list_filter = ["revoked", "tenant"]
    search_fields = ["prefix", "name", "tenant__slug"]
    readonly_fields = ["prefix", "last_used_at", "created_at"]
    list_select_related = ["tenant"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
            return
        key, raw_key = api_key_create(
            tenant=obj.tenant,
            name=obj.name,
            allowed_models=form.cleaned_data["allowed_models"],
            expires_at=obj.expires_at,
        )
        obj.pk = key.pk
        messages.warning(
            request, f"New API key for {key.tenant.slug} — copy it now, it will not be shown again: {raw_key}"
        )

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        for key in queryset:
            api_key_revoke(key=key)
            audit_record(action="revoked", obj=key, via="admin", user=request.user, changed_fields=["revoked"])
        self.message_user(request, f"Revoked {queryset.count()} key(s).")


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "tenant",
        "endpoint",
        "requested_model",
        "provider_name",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "stream",
    ]
    list_filter = ["status", "endpoint", "stream", "usage_estimated"]
    search_fields = ["request_id", "response_id", "requested_model"]
    list_select_related = ["tenant", "api_key", "provider"]
    show_full_result_count = False
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(StoredResponse)
class StoredResponseAdmin(admin.ModelAdmin):
    """The Responses API answers kept for tenants that keep content: read-only, since the gateway
    writes them and the tenant deletes them (`DELETE /v1/responses/{id}`, or content retention)."""

    list_display = ["created_at", "response_id", "tenant", "served_model", "status", "output_tokens"]
    list_filter = [("tenant", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["response_id"]
    list_select_related = ["tenant"]
    show_full_result_count = False
    date_hierarchy = "created_at"
    fields = ["response_id", "tenant", "created_at", "served_model", "status", "answer", "input", "earlier"]

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="model")
    def served_model(self, obj: StoredResponse) -> str:
        return obj.response.get("model", "")

    @admin.display(description="status")
    def status(self, obj: StoredResponse) -> str:
        return obj.response.get("status", "")

    @admin.display(description="output tokens")
    def output_tokens(self, obj: StoredResponse) -> int | None:
        return (obj.response.get("usage") or {}).get("output_tokens")

    @admin.display(description="response")
    def answer(self, obj: StoredResponse) -> str:
        return _json_block(obj.response)

    @admin.display(description="input items")
    def input(self, obj: StoredResponse) -> str:
        return _json_block(obj.input_items)

    @admin.display(description="earlier items (previous_response_id)")
    def earlier(self, obj: StoredResponse) -> str:
        return _json_block(obj.context)


def _json_block(value: object) -> str:
    return format_html("<pre style=\"white-space: pre-wrap\">{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


@admin.register(TenantMembership)
class TenantMembershipAdmin(AuditedAdmin):
    """Who may open which tenant's dashboards, and as what (viewer or admin): a user belongs to
    one tenant."""

    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "user__email", "tenant__slug"]
    list_select_related = ["user", "tenant"]
    autocomplete_fields = ["user"]


class BudgetPeriodInline(admin.TabularInline):
    model = BudgetPeriod
    extra = 0
    can_delete = False
    fields = ["period_start", "spent_usd", "reserved_usd"]
    readonly_fields = fields
    ordering = ["-period_start"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Budget)
class BudgetAdmin(AuditedAdmin):
    list_display = ["__str__", "tenant", "api_key", "period", "amount_usd", "hard", "enabled"]
    list_filter = ["period", "hard", "enabled"]
    search_fields = ["tenant__slug"]
    list_select_related = ["tenant", "api_key"]
    inlines = [BudgetPeriodInline]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = ["created_at", "budget", "period_start", "threshold", "spent_usd", "webhook_status", "email_status"]
    list_select_related = ["budget__tenant", "budget__api_key"]
    list_filter = ["threshold"]

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(RateLimit)
class RateLimitAdmin(admin.ModelAdmin):
    list_display = ["tenant", "api_key", "rpm", "tpm", "queue_seconds"]
    list_select_related = ["tenant", "api_key"]
    search_fields = ["tenant__slug"]
