from django import forms
from django.contrib import admin

from audit.admin import AuditedAdmin

from providers.models import ModelPrice, Provider, ProviderKey, ProviderModel
from providers.services import provider_key_save


class ProviderModelInline(admin.TabularInline):
    model = ProviderModel
    extra = 0
    fields = [
        "alias",
        "upstream_model",
        "mode",
        "input_price_per_million",
        "output_price_per_million",
        "context_window",
        "max_output_tokens",
        "enabled",
    ]


@admin.register(Provider)
class ProviderAdmin(AuditedAdmin):
    list_display = ["name", "type", "api_base", "enabled", "updated_at"]
    list_filter = ["type", "enabled"]
    search_fields = ["name", "api_base"]
    inlines = [ProviderModelInline]


class ModelPriceInline(admin.TabularInline):
    """Dated prices: a new row from a future time schedules a change; past costs never move."""

    model = ModelPrice
    extra = 0
    fields = [
        "effective_from",
        "input_price_per_million",
        "output_price_per_million",
        "cached_input_price_per_million",
        "price_per_image",
        "image_prices",
        "price_per_audio_minute",
        "price_per_million_characters",
        "price_per_thousand_searches",
        "source",
    ]


@admin.register(ProviderModel)
class ProviderModelAdmin(AuditedAdmin):
    inlines = [ModelPriceInline]
    list_display = [
        "alias",
        "provider",
        "upstream_model",
        "mode",
        "input_price_per_million",
        "output_price_per_million",
        "context_window",
        "enabled",
    ]
    list_filter = ["provider", "mode", "enabled"]
    search_fields = ["alias", "upstream_model"]
    list_select_related = ["provider"]


class ProviderKeyForm(forms.ModelForm):
    """The secret is write-only: never rendered back, blank on edit keeps the stored one."""

    secret = forms.CharField(
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        required=False,
        help_text="Stored encrypted and never shown again. Leave blank to keep the current secret.",
    )

    class Meta:
        model = ProviderKey
        fields = ["provider", "name", "secret", "enabled"]

    def clean(self):
        cleaned = super().clean()
        if not self.instance.pk and not cleaned.get("secret"):
            self.add_error("secret", "A new key needs its secret.")
        return cleaned


@admin.register(ProviderKey)
class ProviderKeyAdmin(AuditedAdmin):
    form = ProviderKeyForm
    list_display = ["__str__", "provider", "name", "source", "enabled", "updated_at"]
    list_filter = ["provider", "enabled"]
    readonly_fields = ["source", "created_at", "updated_at"]
    list_select_related = ["provider"]

    def save_model(self, request, obj, form, change):
        provider_key_save(key=obj, secret=form.cleaned_data.get("secret"))
