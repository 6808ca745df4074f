from django.apps import AppConfig
from django.db.models.signals import pre_save


class AccountingConfig(AppConfig):
    name = "accounting"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounting.prices import provider_model_mode_fill
        from providers.models import ProviderModel

        pre_save.connect(provider_model_mode_fill, sender=ProviderModel, dispatch_uid="provider-model-mode")
