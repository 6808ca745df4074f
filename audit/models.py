from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditEntry(models.Model):
    """Who created, changed, revoked, rotated or deleted which configuration object, and when.

    Only names are kept: the object's repr (never a secret: keys print their visible prefix at
    most) and the names of the fields that changed, never their values.
    """

    class Action(models.TextChoices):
        CREATED = "created"
        CHANGED = "changed"
        REVOKED = "revoked"
        ROTATED = "rotated"
        DELETED = "deleted"

    class Via(models.TextChoices):
        API = "api", "Operator API"
        ADMIN = "admin", "Admin"
        COMMAND = "command", "Management command"
        DASHBOARD = "dashboard", "Tenant self-service"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor = models.CharField(max_length=200, help_text="Username (and staff token) at the time, or the command.")
    via = models.CharField(max_length=10, choices=Via.choices)
    action = models.CharField(max_length=10, choices=Action.choices)
    object_type = models.CharField(max_length=100, help_text="app_label.model, e.g. accounting.tenantapikey")
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    changed_fields = models.JSONField(default=list, blank=True, help_text="Field names only, never values.")

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type} {self.object_repr}"
