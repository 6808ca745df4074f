from django import forms
from django.contrib import admin, messages

from audit.admin import AuditedAdmin
from audit.services import audit_record
from operators.models import StaffToken
from operators.services import staff_token_create, staff_token_revoke


class StaffTokenForm(forms.ModelForm):
    class Meta:
        model = StaffToken
        fields = ["user", "name", "revoked"]

    def clean_user(self):
        user = self.cleaned_data["user"]
        if not (user.is_active and user.is_staff):
            raise forms.ValidationError("Staff tokens are for active staff users only.")
        return user


@admin.register(StaffToken)
class StaffTokenAdmin(AuditedAdmin):
    """Tokens are shown once, when created here or with `manage.py create_staff_token`."""

    form = StaffTokenForm
    list_display = ["prefix", "user", "name", "revoked", "last_used_at", "created_at"]
    list_filter = ["revoked"]
    search_fields = ["prefix", "name", "user__username"]
    list_select_related = ["user"]
    fields = ["user", "name", "prefix", "revoked", "last_used_at", "created_at"]
    readonly_fields = ["prefix", "last_used_at", "created_at"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
            return
        token, raw = staff_token_create(user=obj.user, name=obj.name)
        obj.pk = token.pk
        messages.warning(request, f"New staff token for {token.user} — copy it now, it will not be shown again: {raw}")

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            staff_token_revoke(token=token)
            audit_record(action="revoked", obj=token, via="admin", user=request.user, changed_fields=["revoked"])
        self.message_user(request, f"Revoked {queryset.count()} token(s).")
