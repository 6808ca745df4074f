from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class AccountingConfig(AppConfig):
    name = "accounting"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.contrib.sessions.models import Session

        from accounting.auth import auth_cache_clear
        from accounting.budgets import budget_cache_clear
        from accounting.members import member_cache_clear
        from accounting.models import Budget, RateLimit, Tenant, TenantApiKey, TenantMembership
        from accounting.quotas import quota_cache_clear

        def clear(**kwargs) -> None:
            auth_cache_clear()
            budget_cache_clear()
            quota_cache_clear()

        def members_clear(**kwargs) -> None:
            member_cache_clear()

        for model in (Tenant, TenantApiKey, Budget, RateLimit):
            post_save.connect(clear, sender=model, weak=False, dispatch_uid=f"auth-cache-{model.__name__}")
            post_delete.connect(clear, sender=model, weak=False, dispatch_uid=f"auth-cache-del-{model.__name__}")
        # An open WebSocket checks its member's session per request (accounting.members): a logout,
        # and a change of the user (deactivated, new password), the membership or the tenant
        # reach it at once in this process. A session's row deleted covers a logout whose signal
        # ran before the row was gone (Django sends `user_logged_out`, then flushes the session).
        for model in (Tenant, TenantMembership, get_user_model()):
            post_save.connect(members_clear, sender=model, weak=False, dispatch_uid=f"member-cache-{model.__name__}")
            post_delete.connect(members_clear, sender=model, weak=False,
                                dispatch_uid=f"member-cache-del-{model.__name__}")
        post_delete.connect(members_clear, sender=Session, weak=False, dispatch_uid="member-cache-del-Session")
        user_logged_out.connect(members_clear, weak=False, dispatch_uid="member-cache-logout")
