"""The kernel's one table: the configuration generation (see `kernel.config_generation`).

It lives here, beside `ConfigCache` that reads it, and not in an app: every app's configuration
bumps it and every process's caches read it, so it belongs to the layer that imports no app.
"""

from django.db import models


class ConfigGeneration(models.Model):
    """One row (id 1): a counter raised in the transaction of every configuration change."""

    ROW = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=ROW)
    value = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "configuration generation"

    def __str__(self) -> str:
        return f"configuration generation {self.value}"
