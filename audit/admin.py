from django.contrib import admin

from audit.models import AuditEntry
from kernel.admin import ReadOnlyAdmin
from audit.services import audit_record, audit_update_action


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """Read-only: the log is written by `audit.services.audit_record` alone."""

    deletable = False

    list_display = ["created_at", "actor", "via", "action", "object_type", "object_repr", "changed_fields"]
    list_filter = ["action", "via", "object_type"]
    search_fields = ["actor", "object_repr", "object_id"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    show_full_result_count = False



class AuditedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose additions, changes and deletions also land in the audit log.

    Hooks Django's own `log_*` calls (made after each save or delete), so subclasses keep their
    `save_model`; the form's changed field names are kept from `construct_change_message`.
    """

    def construct_change_message(self, request, form, formsets, add=False):
        fields = list(form.changed_data) if form is not None else []
        # An inline that changed (a route group's deployments) counts under its name.
        fields += [formset.prefix for formset in formsets or () if formset.has_changed()]
        request._audit_changed_fields = fields
        return super().construct_change_message(request, form, formsets, add)

    def log_addition(self, request, obj, message):
        fields = getattr(request, "_audit_changed_fields", [])
        audit_record(action="created", obj=obj, via="admin", user=request.user, changed_fields=fields)
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        fields = getattr(request, "_audit_changed_fields", [])
        if fields or message:  # Django logs "No fields changed." saves too; they change nothing
            action = audit_update_action(obj=obj, changed_fields=fields)
            audit_record(action=action, obj=obj, via="admin", user=request.user, changed_fields=fields)
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            audit_record(action="deleted", obj=obj, via="admin", user=request.user)
        return super().log_deletions(request, queryset)
