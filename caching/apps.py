from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class CachingConfig(AppConfig):
    name = "caching"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from caching.models import CachePolicy
        from caching.selectors import cache_policies_clear

        def clear(**kwargs) -> None:
            cache_policies_clear()

        post_save.connect(clear, sender=CachePolicy, weak=False, dispatch_uid="caching-policy")
        post_delete.connect(clear, sender=CachePolicy, weak=False, dispatch_uid="caching-policy-del")
