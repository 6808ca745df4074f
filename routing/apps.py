from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_delete, post_save


class RoutingConfig(AppConfig):
    name = "routing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from providers.models import ModelPrice, Provider, ProviderKey, ProviderModel
        from routing.models import Deployment, Experiment, ExperimentVariant, RouteGroup, RoutingRule
        from routing.selectors import routing_table_clear

        def clear(**kwargs) -> None:
            routing_table_clear()

        for model in (
            Provider, ProviderModel, ProviderKey, ModelPrice, RouteGroup, Deployment, RoutingRule,
            Experiment, ExperimentVariant,
        ):
            post_save.connect(clear, sender=model, weak=False, dispatch_uid=f"routing-{model.__name__}")
            post_delete.connect(clear, sender=model, weak=False, dispatch_uid=f"routing-del-{model.__name__}")
        for through in (RoutingRule.tenants.through, RoutingRule.api_keys.through):
            m2m_changed.connect(clear, sender=through, weak=False, dispatch_uid=f"routing-m2m-{through.__name__}")
