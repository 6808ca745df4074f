from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class AccountingConfig(AppConfig):
    name = "accounting"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounting.auth import auth_cache_clear
        from accounting.budgets import budget_cache_clear
        from accounting.models import Budget, RateLimit, Tenant, TenantApiKey
        from accounting.quotas import quota_cache_clear

        def clear(**kwargs) -> None:
            auth_cache_clear()
            budget_cache_clear()
            quota_cache_clear()

        for model in (Tenant, TenantApiKey, Budget, RateLimit):
            post_save.connect(clear, sender=model, weak=False, dispatch_uid=f"auth-cache-{model.__name__}")
            post_delete.connect(clear, sender=model, weak=False, dispatch_uid=f"auth-cache-del-{model.__name__}")
