from django.contrib import admin

from feedback.models import Feedback, FeedbackMetric, MetricValue
from kernel.admin import ReadOnlyAdmin


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    """Read-only: feedback is written by the people who rated a response, not by operators."""

    list_display = ["updated_at", "tenant", "source", "rating", "score", "response_id", "short_comment"]
    list_filter = ["source", "rating", "score", "tenant"]
    search_fields = ["response_id", "comment", "correction"]
    list_select_related = ["tenant"]
    raw_id_fields = ["usage_record"]
    show_full_result_count = False
    date_hierarchy = "created_at"

    @admin.display(description="comment")
    def short_comment(self, obj: Feedback) -> str:
        return obj.comment[:80]


@admin.register(FeedbackMetric)
class FeedbackMetricAdmin(admin.ModelAdmin):
    """Named metrics a tenant may send with its feedback (`metrics` in POST /v1/feedback)."""

    list_display = ["tenant", "name", "kind", "scope", "min_value", "max_value", "description"]
    list_filter = ["kind", "scope", "tenant"]
    search_fields = ["name", "tenant__slug"]
    list_select_related = ["tenant"]


@admin.register(MetricValue)
class MetricValueAdmin(ReadOnlyAdmin):
    list_display = ["updated_at", "tenant", "metric", "value", "source", "usage_record", "conversation_id"]
    list_filter = ["metric__name", "tenant"]
    search_fields = ["conversation_id", "usage_record__response_id"]
    list_select_related = ["tenant", "metric", "usage_record"]
    raw_id_fields = ["usage_record"]
