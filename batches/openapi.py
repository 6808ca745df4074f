"""The Files and Batches API in the OpenAPI schema (`kernel.openapi.documented`)."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers

from kernel.openapi import ApiDescription

TAGS = ["tenant API"]
PAGE = [OpenApiParameter("after", str, description="The id of the last object of the previous page."),
        OpenApiParameter("limit", int, description="How many objects (files: 1-10000, batches: 1-100).")]


class FileObject(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["file"])
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField()
    filename = serializers.CharField()
    purpose = serializers.ChoiceField(choices=["batch", "batch_output"])
    status = serializers.CharField()


class FileUpload(serializers.Serializer):
    file = serializers.FileField(help_text="JSONL: one request per line, at most 50,000 lines.")
    purpose = serializers.ChoiceField(choices=["batch"])


class FileList(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = FileObject(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class FileDeleted(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["file"])
    deleted = serializers.BooleanField()


class RequestCounts(serializers.Serializer):
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class BatchObject(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["batch"])
    endpoint = serializers.CharField()
    errors = serializers.DictField(allow_null=True)
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = serializers.ChoiceField(choices=["validating", "failed", "in_progress", "finalizing", "completed",
                                              "expired", "cancelling", "cancelled"])
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = serializers.IntegerField()
    expires_at = serializers.IntegerField()
    request_counts = RequestCounts()
    metadata = serializers.DictField(allow_null=True)


class CreateBatch(serializers.Serializer):
    input_file_id = serializers.CharField()
    endpoint = serializers.ChoiceField(choices=["/v1/chat/completions", "/v1/embeddings", "/v1/responses"])
    completion_window = serializers.ChoiceField(choices=["24h"])
    metadata = serializers.DictField(child=serializers.CharField(), required=False)


class BatchList(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = BatchObject(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class FilesDoc(ApiDescription):
    error_statuses = (400, 401, 413)

    @extend_schema(operation_id="files_create", tags=TAGS, request={"multipart/form-data": FileUpload},
                   responses=FileObject, summary="Upload a batch input file")
    def post(self, request):
        raise NotImplementedError

    @extend_schema(operation_id="files_list", tags=TAGS, responses=FileList, summary="The tenant's files",
                   parameters=[*PAGE, OpenApiParameter("purpose", str)])
    def get(self, request):
        raise NotImplementedError


class FileDetailDoc(ApiDescription):
    error_statuses = (401, 404)

    @extend_schema(operation_id="files_retrieve", tags=TAGS, responses=FileObject, summary="A file")
    def get(self, request, file_id):
        raise NotImplementedError

    @extend_schema(operation_id="files_delete", tags=TAGS, responses=FileDeleted, summary="Delete a file")
    def delete(self, request, file_id):
        raise NotImplementedError


class FileContentDoc(ApiDescription):
    error_statuses = (401, 404)

    @extend_schema(operation_id="files_content", tags=TAGS, responses={(200, "application/jsonl"): str},
                   summary="A file's content")
    def get(self, request, file_id):
        raise NotImplementedError


class BatchesDoc(ApiDescription):
    error_statuses = (400, 401, 404)

    @extend_schema(operation_id="batches_create", tags=TAGS, request=CreateBatch, responses=BatchObject,
                   summary="Create a batch")
    def post(self, request):
        raise NotImplementedError

    @extend_schema(operation_id="batches_list", tags=TAGS, responses=BatchList, parameters=PAGE,
                   summary="The tenant's batches")
    def get(self, request):
        raise NotImplementedError


class BatchDetailDoc(ApiDescription):
    error_statuses = (401, 404)

    @extend_schema(operation_id="batches_retrieve", tags=TAGS, responses=BatchObject, summary="A batch")
    def get(self, request, batch_id):
        raise NotImplementedError


class BatchCancelDoc(ApiDescription):
    error_statuses = (400, 401, 404)

    @extend_schema(operation_id="batches_cancel", tags=TAGS, request=None, responses=BatchObject,
                   summary="Cancel a batch")
    def post(self, request, batch_id):
        raise NotImplementedError
