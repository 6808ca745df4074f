from django.contrib import admin

from feedback.models import Feedback


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    """Read-only: feedback is written by the people who rated a response, not by operators."""

    list_display = ["updated_at", "tenant", "source", "rating", "response_id", "short_comment"]
    list_filter = ["source", "rating", "tenant"]
    search_fields = ["response_id", "comment"]
    list_select_related = ["tenant"]
    raw_id_fields = ["usage_record"]
    show_full_result_count = False
    date_hierarchy = "created_at"

    @admin.display(description="comment")
    def short_comment(self, obj: Feedback) -> str:
        return obj.comment[:80]

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
