from importlib import import_module

from django.apps import AppConfig


class OperatorsConfig(AppConfig):
    name = "operators"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the staff token's security scheme with drf-spectacular.
        import_module("operators.authentication")
