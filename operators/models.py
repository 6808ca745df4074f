from django.conf import settings
from django.db import models


class StaffToken(models.Model):
    """A token for the operator API, owned by a staff user and stored only as a SHA-256 hash.

    Like tenant keys, the secret is random (256 bits) and shown once at creation
    (`operators.services.staff_token_create`); `prefix` lets an operator recognise it in lists.
    A token acts with its user's permissions (`operators.permissions`), and only while that user is
    active staff.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_tokens")
    name = models.CharField(max_length=100, default="default")
    prefix = models.CharField(max_length=16, editable=False)
    hashed_key = models.CharField(max_length=64, unique=True, editable=False)
    revoked = models.BooleanField(default=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user__username", "name"]

    def __str__(self) -> str:
        return f"{self.user.get_username()}/{self.name} ({self.prefix}…)"
