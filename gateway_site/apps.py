from django.apps import AppConfig


class GatewaySiteConfig(AppConfig):
    name = "gateway_site"

    def ready(self) -> None:
        from kernel.config_generation import config_signals_connect

        # Every configuration change raises the generation that every process's caches read.
        config_signals_connect()
