from django.db import models


class Feedback(models.Model):
    """A judgement of one response (the UsageRecord it was served as), from one source.

    One row per (response, source): rating the same response again from the same place updates
    the row instead of adding a second vote. `rating` is +1 / -1 for thumbs; it is nullable so
    that later kinds of feedback (a correction, tags, another scale) can live on the same row.
    """

    tenant = models.ForeignKey("accounting.Tenant", on_delete=models.CASCADE, related_name="feedback")
    usage_record = models.ForeignKey(
        "accounting.UsageRecord", on_delete=models.CASCADE, related_name="feedback"
    )
    response_id = models.CharField(max_length=100, db_index=True)
    source = models.CharField(max_length=32, default="playground")
    rating = models.SmallIntegerField(null=True, blank=True, help_text="+1 (good) or -1 (bad).")
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        verbose_name_plural = "feedback"
        constraints = [
            models.UniqueConstraint(fields=["usage_record", "source"], name="uniq_feedback_record_source")
        ]
        indexes = [models.Index(fields=["tenant", "created_at"], name="feedback_tenant_time")]

    def __str__(self) -> str:
        rating = f" {self.rating:+d}" if self.rating is not None else ""
        return f"{self.response_id} {self.source}{rating}"
