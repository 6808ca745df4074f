from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class ProvidersConfig(AppConfig):
    name = "providers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from providers.models import Provider, ProviderKey, ProviderModel
        from providers.selectors import catalog_clear

        def clear(**kwargs) -> None:
            catalog_clear()

        for model in (Provider, ProviderModel, ProviderKey):
            post_save.connect(clear, sender=model, dispatch_uid=f"catalog-{model.__name__}")
            post_delete.connect(clear, sender=model, dispatch_uid=f"catalog-del-{model.__name__}")
