from django.apps import AppConfig


class KernelConfig(AppConfig):
    """An app only for its table (`kernel.models.ConfigGeneration`)."""

    name = "kernel"
