from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class GuardrailsConfig(AppConfig):
    name = "guardrails"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from guardrails.models import GuardrailPolicy, GuardrailRule
        from guardrails.selectors import guardrail_table_clear

        def clear(**kwargs) -> None:
            guardrail_table_clear()

        for model in (GuardrailPolicy, GuardrailRule):
            post_save.connect(clear, sender=model, weak=False, dispatch_uid=f"guardrails-{model.__name__}")
            post_delete.connect(clear, sender=model, weak=False, dispatch_uid=f"guardrails-del-{model.__name__}")
