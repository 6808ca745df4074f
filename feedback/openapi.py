"""Schema description of `POST /v1/feedback` and `GET /v1/feedback`, a plain async view.

The request serializer mirrors the bounds `feedback.services.submission_parse` enforces.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers

from feedback import services
from kernel.openapi import ApiDescription


@extend_schema_field({"oneOf": [{"type": "integer", "enum": [1, -1]}, {"type": "string", "enum": ["up", "down", "thumbs_up", "thumbs_down"]}], "nullable": True})
class ThumbField(serializers.Field):
    pass


@extend_schema_field({"type": "object", "additionalProperties": {"oneOf": [{"type": "boolean"}, {"type": "number"}]},
                      "maxProperties": services.MAX_METRICS})
class MetricsField(serializers.Field):
    pass


class FeedbackCreate(serializers.Serializer):
    response_id = serializers.CharField(required=False, max_length=services.RESPONSE_ID_MAX,
                                        help_text="The response rated (chatcmpl-…, msg_…, resp_…).")
    conversation_id = serializers.CharField(required=False, max_length=services.CONVERSATION_ID_MAX,
                                            help_text="For conversation metrics without a response id.")
    source = serializers.RegexField(services.SOURCE_PATTERN.pattern, required=False, default=services.DEFAULT_SOURCE)
    rating = ThumbField(required=False, help_text="Thumbs up (1, \"up\") or down (-1, \"down\").")
    score = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=5)
    correction = serializers.CharField(required=False, allow_null=True, allow_blank=True,
                                       max_length=services.MAX_CORRECTION_CHARS)
    tags = serializers.ListField(child=serializers.CharField(min_length=1, max_length=services.MAX_TAG_CHARS),
                                 required=False, allow_null=True, max_length=services.MAX_TAGS)
    comment = serializers.CharField(required=False, allow_null=True, allow_blank=True,
                                    max_length=services.MAX_COMMENT_CHARS)
    metadata = serializers.DictField(required=False, allow_null=True)
    metrics = MetricsField(required=False, help_text="Named metrics declared for the tenant.")


class FeedbackOut(serializers.Serializer):
    object = serializers.ChoiceField(choices=["feedback"])
    response_id = serializers.CharField()
    conversation_id = serializers.CharField(allow_null=True)
    source = serializers.CharField()
    rating = serializers.IntegerField(allow_null=True)
    score = serializers.IntegerField(allow_null=True)
    correction = serializers.CharField(allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField())
    comment = serializers.CharField(allow_blank=True)
    metadata = serializers.DictField()
    metrics = MetricsField()
    created_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField(allow_null=True)


class FeedbackList(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = FeedbackOut(many=True)
    conversation = serializers.DictField(required=False, help_text="With conversation_id: metrics by source.")


class FeedbackDoc(ApiDescription):
    error_statuses = (400, 401, 404, 405)

    @extend_schema(
        operation_id="feedback_create", tags=["tenant API"], request=FeedbackCreate,
        responses={201: FeedbackOut, 200: FeedbackOut},
        summary="Rate, correct or measure a response, or a conversation (docs/feedback.md)",
    )
    def post(self, request):
        raise NotImplementedError  # never routed: describes feedback.api.feedback

    @extend_schema(
        operation_id="feedback_list", tags=["tenant API"], responses=FeedbackList,
        summary="Every source's feedback on a response or a conversation",
        parameters=[
            OpenApiParameter("response_id", OpenApiTypes.STR, description="Exactly one of response_id and conversation_id."),
            OpenApiParameter("conversation_id", OpenApiTypes.STR),
        ],
    )
    def get(self, request):
        raise NotImplementedError  # never routed: describes feedback.api.feedback
