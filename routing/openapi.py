"""Schema descriptions of the tenant API's plain async views (see `kernel.openapi`).

The request serializers mirror `routing.validation` (and `routing.anthropic_format` for the
Anthropic door): the bounds and required fields it enforces are the ones documented here, so a
client, or a fuzzer, built from the schema sends what the views accept. They are never used to
validate: the views keep doing that themselves.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers

from kernel.openapi import AnthropicError, ApiDescription
from routing import validation
from routing.anthropic_format import REQUEST_KEYS

CONTENT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": sorted(validation.CONTENT_PART_TYPES)},
        "text": {"type": "string", "description": "Required when type is text."},
        "image_url": {
            "type": "object", "required": ["url"], "properties": {"url": {"type": "string"}},
            "description": "Required when type is image_url.",
        },
    },
}
TEXT_OR_PARTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": CONTENT_PART}]}


@extend_schema_field(TEXT_OR_PARTS)
class ContentField(serializers.JSONField):
    pass


# Anthropic's content blocks: text, image, tool_use, tool_result... (translated by anthropic_format).
BLOCK = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": BLOCK}]})
class AnthropicContentField(serializers.JSONField):
    pass


@extend_schema_field({"type": "object", "additionalProperties": {"type": "string", "maxLength": 512}, "maxProperties": 16})
class MetadataField(serializers.JSONField):
    """Gateway metadata: `task`, `tags` (comma-separated), `conversation_id`, … (docs/api.md)."""


class RoutingHints(serializers.Serializer):
    strategy = serializers.CharField(required=False)
    prefer = serializers.ListField(child=serializers.CharField(), required=False)
    exclude = serializers.ListField(child=serializers.CharField(), required=False)


class ChatMessage(serializers.Serializer):
    role = serializers.ChoiceField(choices=sorted(validation.MESSAGE_ROLES))
    content = ContentField(help_text="A string, or an array of parts (text, image_url, ...).", allow_null=True)
    name = serializers.CharField(required=False)
    tool_calls = serializers.ListField(child=serializers.DictField(), required=False)
    tool_call_id = serializers.CharField(required=False)


class StreamOptions(serializers.Serializer):
    include_usage = serializers.BooleanField(required=False)


class CreateChatCompletion(serializers.Serializer):
    """OpenAI's chat completion request (https://platform.openai.com/docs/api-reference/chat/create)."""

    model = serializers.CharField(max_length=200, help_text="An alias, a routing rule's model, or provider:model.")
    messages = ChatMessage(many=True, allow_empty=False)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    presence_penalty = serializers.FloatField(required=False, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, min_value=-2, max_value=2)
    n = serializers.IntegerField(required=False, min_value=1, max_value=128)
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=validation.MAX_TOKENS_LIMIT)
    max_completion_tokens = serializers.IntegerField(required=False, min_value=1, max_value=validation.MAX_TOKENS_LIMIT)
    seed = serializers.IntegerField(required=False, min_value=-(2**63), max_value=2**63 - 1)
    top_logprobs = serializers.IntegerField(required=False, min_value=0, max_value=20)
    logprobs = serializers.BooleanField(required=False)
    stream = serializers.BooleanField(required=False, help_text="Answer as server-sent events.")
    stream_options = StreamOptions(required=False, help_text="Only with stream: true.")
    stop = serializers.JSONField(required=False, help_text="A string or up to 4 strings.")
    user = serializers.CharField(required=False, max_length=512)
    tools = serializers.ListField(child=serializers.DictField(), required=False)
    tool_choice = serializers.JSONField(required=False)
    response_format = serializers.DictField(required=False)
    logit_bias = serializers.DictField(required=False)
    metadata = MetadataField(required=False)
    routing = RoutingHints(required=False, help_text="The gateway's routing hints.")


class ChatCompletion(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["chat.completion"])
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = serializers.ListField(child=serializers.DictField())
    usage = serializers.DictField()


class CreateCompletion(serializers.Serializer):
    """OpenAI's legacy completion request (https://platform.openai.com/docs/api-reference/completions/create),
    served as a chat request of one user message: `suffix`, `logprobs`, `best_of` past `n` and
    several prompts are refused with a 400."""

    model = serializers.CharField(max_length=200, help_text="An alias, a routing rule's model, or provider:model.")
    prompt = serializers.JSONField(help_text="A string, or an array of one string.")
    suffix = serializers.CharField(required=False, allow_blank=True, help_text="Refused unless empty.")
    echo = serializers.BooleanField(required=False, help_text="The prompt in front of each choice's text.")
    logprobs = serializers.IntegerField(required=False, allow_null=True, help_text="Refused unless null.")
    best_of = serializers.IntegerField(required=False, min_value=1, max_value=20, help_text="At most `n`.")
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=validation.MAX_TOKENS_LIMIT,
                                          help_text=f"Default {validation.COMPLETION_DEFAULT_MAX_TOKENS}.")
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    presence_penalty = serializers.FloatField(required=False, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, min_value=-2, max_value=2)
    n = serializers.IntegerField(required=False, min_value=1, max_value=128)
    seed = serializers.IntegerField(required=False, min_value=-(2**63), max_value=2**63 - 1)
    stream = serializers.BooleanField(required=False, help_text="Answer as server-sent events.")
    stream_options = StreamOptions(required=False, help_text="Only with stream: true.")
    stop = serializers.JSONField(required=False, help_text="A string or up to 4 strings.")
    user = serializers.CharField(required=False, max_length=512)
    logit_bias = serializers.DictField(required=False)
    metadata = MetadataField(required=False)
    routing = RoutingHints(required=False, help_text="The gateway's routing hints.")


class TextCompletion(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["text_completion"])
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = serializers.ListField(child=serializers.DictField())
    usage = serializers.DictField()


class CreateEmbedding(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    input = serializers.JSONField(
        help_text=f"A string, or an array of up to {validation.MAX_EMBEDDING_INPUTS} strings or token arrays."
    )
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False)
    dimensions = serializers.IntegerField(required=False, min_value=1, max_value=65536)
    user = serializers.CharField(required=False, max_length=512)
    metadata = MetadataField(required=False)
    routing = RoutingHints(required=False)


class EmbeddingList(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = serializers.ListField(child=serializers.DictField())
    model = serializers.CharField()
    usage = serializers.DictField()


class ModelEntry(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["model"])
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelList(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = ModelEntry(many=True)


class AnthropicMessageParam(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant"])
    content = AnthropicContentField()


class AnthropicCreateMessage(serializers.Serializer):
    """Anthropic's Messages request (https://docs.anthropic.com/en/api/messages)."""

    model = serializers.CharField(max_length=200)
    messages = AnthropicMessageParam(many=True, allow_empty=False)
    max_tokens = serializers.IntegerField(min_value=1, max_value=validation.MAX_TOKENS_LIMIT)
    system = AnthropicContentField(required=False)
    stop_sequences = serializers.ListField(child=serializers.CharField(), required=False, max_length=4)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=1)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    top_k = serializers.IntegerField(required=False, min_value=1)
    stream = serializers.BooleanField(required=False)
    metadata = serializers.DictField(required=False)
    tools = serializers.ListField(child=serializers.DictField(), required=False)
    tool_choice = serializers.DictField(required=False)


class AnthropicCountTokens(AnthropicCreateMessage):
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=validation.MAX_TOKENS_LIMIT)
    stream = None
    stop_sequences = None
    temperature = None
    top_p = None
    top_k = None


class AnthropicMessage(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.ChoiceField(choices=["message"])
    role = serializers.ChoiceField(choices=["assistant"])
    model = serializers.CharField()
    content = serializers.ListField(child=serializers.DictField())
    stop_reason = serializers.CharField(allow_null=True)
    usage = serializers.DictField()


class TokenCount(serializers.Serializer):
    input_tokens = serializers.IntegerField()


def passthrough(serializer: type[serializers.Serializer], names: set[str]) -> type[serializers.Serializer]:
    """`serializer` with the fields a view accepts without the gateway reading them (forwarded to
    the provider as sent) declared as free-form, so the schema lists every field the validator
    allows. A subclass of the same name: DRF collects a serializer's fields when its class is made."""
    extra = {
        name: serializers.JSONField(
            required=False, help_text="Forwarded to the provider as sent (see the vendor's reference)."
        )
        for name in sorted(names - set(serializer().fields))
    }
    return type(serializer.__name__, (serializer,), {"__module__": serializer.__module__, **extra})


CreateChatCompletion = passthrough(CreateChatCompletion, validation.CHAT_FIELDS)
CreateEmbedding = passthrough(CreateEmbedding, validation.EMBEDDING_FIELDS)
CreateCompletion = passthrough(CreateCompletion, validation.COMPLETION_FIELDS)
AnthropicCreateMessage = passthrough(AnthropicCreateMessage, REQUEST_KEYS)
AnthropicCountTokens = passthrough(
    AnthropicCountTokens, REQUEST_KEYS - {"stream", "stop_sequences", "temperature", "top_p", "top_k"}
)

SSE = OpenApiResponse(OpenApiTypes.STR, description="Server-sent events, when `stream` is true.")
COMPLETION_ERRORS = (400, 401, 403, 404, 413, 429, 502, 503, 504)


class ChatCompletionsDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS

    @extend_schema(
        operation_id="chat_completions_create", tags=["tenant API"], request=CreateChatCompletion,
        responses={200: ChatCompletion, (200, "text/event-stream"): SSE},
        summary="Create a chat completion (JSON, or SSE with stream: true)",
    )
    def post(self, request):
        raise NotImplementedError  # never routed: describes routing.api.chat_completions


class CompletionsDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS

    @extend_schema(
        operation_id="completions_create", tags=["tenant API"], request=CreateCompletion,
        responses={200: TextCompletion, (200, "text/event-stream"): SSE},
        summary="Create a legacy text completion (served as chat; JSON, or SSE with stream: true)",
    )
    def post(self, request):
        raise NotImplementedError  # never routed: describes routing.api.completions


class EmbeddingsDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS

    @extend_schema(operation_id="embeddings_create", tags=["tenant API"], request=CreateEmbedding,
                   responses=EmbeddingList, summary="Create embeddings")
    def post(self, request):
        raise NotImplementedError


class ModelsDoc(ApiDescription):
    error_statuses = (401,)

    @extend_schema(operation_id="models_list", tags=["tenant API"], responses=ModelList,
                   summary="The models this key may use")
    def get(self, request):
        raise NotImplementedError


class MessagesDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS
    error_serializer = AnthropicError

    @extend_schema(
        operation_id="messages_create", tags=["tenant API (Anthropic)"], request=AnthropicCreateMessage,
        responses={200: AnthropicMessage, (200, "text/event-stream"): SSE},
        summary="Create a message (Anthropic Messages format)",
    )
    def post(self, request):
        raise NotImplementedError


class CountTokensDoc(ApiDescription):
    error_statuses = (400, 401, 403, 404, 413)
    error_serializer = AnthropicError

    @extend_schema(operation_id="messages_count_tokens", tags=["tenant API (Anthropic)"],
                   request=AnthropicCountTokens, responses=TokenCount,
                   summary="Count a request's input tokens (estimated, never billed)")
    def post(self, request):
        raise NotImplementedError


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]})
class ResponsesInputField(serializers.JSONField):
    pass


class CreateResponse(serializers.Serializer):
    """`POST /v1/responses` (OpenAI's Responses API, translated to chat: `routing.responses_format`)."""

    model = serializers.CharField(max_length=200)
    input = ResponsesInputField(help_text="A string, or items: message, function_call, function_call_output.")
    instructions = serializers.CharField(required=False)
    tools = serializers.ListField(child=serializers.DictField(), required=False, help_text="Function tools.")
    tool_choice = serializers.JSONField(required=False)
    text = serializers.DictField(required=False, help_text="`format`: text, json_object or json_schema.")
    max_output_tokens = serializers.IntegerField(required=False, min_value=1, max_value=validation.MAX_TOKENS_LIMIT)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    metadata = MetadataField(required=False)
    user = serializers.CharField(required=False)
    store = serializers.BooleanField(required=False)
    previous_response_id = serializers.CharField(required=False)
    stream = serializers.BooleanField(required=False)


class ResponseObject(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["response"])
    status = serializers.CharField()
    model = serializers.CharField()
    output = serializers.ListField(child=serializers.DictField())
    usage = serializers.DictField(allow_null=True)


class ResponseDeleted(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["response"])
    deleted = serializers.BooleanField()


class ResponseItemList(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = serializers.ListField(child=serializers.DictField())
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class ResponsesDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS

    @extend_schema(operation_id="responses_create", tags=["tenant API"], request=CreateResponse,
                   responses={200: ResponseObject, (200, "text/event-stream"): SSE},
                   summary="Create a response (OpenAI Responses API)")
    def post(self, request):
        raise NotImplementedError


class ResponseDetailDoc(ApiDescription):
    error_statuses = (401, 404)

    @extend_schema(operation_id="responses_retrieve", tags=["tenant API"], responses=ResponseObject,
                   summary="A stored response")
    def get(self, request, response_id):
        raise NotImplementedError

    @extend_schema(operation_id="responses_delete", tags=["tenant API"], responses=ResponseDeleted,
                   summary="Delete a stored response")
    def delete(self, request, response_id):
        raise NotImplementedError


class ResponseInputItemsDoc(ApiDescription):
    error_statuses = (400, 401, 404)

    @extend_schema(operation_id="responses_input_items", tags=["tenant API"], responses=ResponseItemList,
                   summary="A stored response's input items")
    def get(self, request, response_id):
        raise NotImplementedError


class ResponseCancelDoc(ApiDescription):
    error_statuses = (400, 401, 404)

    @extend_schema(operation_id="responses_cancel", tags=["tenant API"], request=None, responses=ResponseObject,
                   summary="Cancel a background response (the gateway runs none: a stored response is a 400)")
    def post(self, request, response_id):
        raise NotImplementedError


class ResponseInputTokens(serializers.Serializer):
    object = serializers.ChoiceField(choices=["response.input_tokens"])
    input_tokens = serializers.IntegerField(min_value=0)


class ResponseInputTokensDoc(ApiDescription):
    error_statuses = (400, 401, 403, 404, 413)

    @extend_schema(operation_id="responses_input_tokens", tags=["tenant API"], request=CreateResponse,
                   responses=ResponseInputTokens,
                   summary="Count a Responses request's input tokens (the provider's counter or an estimate, never billed)")
    def post(self, request):
        raise NotImplementedError


# --- the media endpoints (routing/media_api.py; bounds as in routing/media_validation.py) ----------
from routing import media_validation as media_checks  # noqa: E402


class CreateImage(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    prompt = serializers.CharField(max_length=32000)
    n = serializers.IntegerField(min_value=1, max_value=media_checks.MAX_IMAGES, required=False)
    size = serializers.ChoiceField(choices=sorted(media_checks.IMAGE_SIZES), required=False)
    quality = serializers.ChoiceField(choices=sorted(media_checks.IMAGE_QUALITIES), required=False)
    response_format = serializers.ChoiceField(choices=["url", "b64_json"], required=False)


class ImagesResponse(serializers.Serializer):
    created = serializers.IntegerField()
    data = serializers.ListField(child=serializers.DictField())


class CreateSpeech(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    input = serializers.CharField(max_length=media_checks.MAX_SPEECH_CHARACTERS)
    voice = serializers.ChoiceField(choices=sorted(media_checks.VOICES))
    response_format = serializers.ChoiceField(choices=sorted(media_checks.SPEECH_FORMATS), required=False)
    speed = serializers.FloatField(min_value=0.25, max_value=4.0, required=False)


class CreateTranscription(serializers.Serializer):
    file = serializers.FileField()
    model = serializers.CharField(max_length=200)
    response_format = serializers.ChoiceField(choices=sorted(media_checks.TRANSCRIPT_FORMATS), required=False)


class CreateModeration(serializers.Serializer):
    model = serializers.CharField(max_length=200, required=False)
    input = serializers.JSONField()


class Moderation(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField()
    results = serializers.ListField(child=serializers.DictField())


class Rerank(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    query = serializers.CharField()
    documents = serializers.ListField(child=serializers.CharField(allow_blank=True), min_length=1,
                                      max_length=media_checks.MAX_RERANK_DOCUMENTS)
    top_n = serializers.IntegerField(min_value=1, max_value=media_checks.MAX_RERANK_DOCUMENTS, required=False)


class RerankResult(serializers.Serializer):
    index = serializers.IntegerField()
    relevance_score = serializers.FloatField()


class RerankResponse(serializers.Serializer):
    id = serializers.CharField()
    results = RerankResult(many=True)
    meta = serializers.DictField()


class CohereError(serializers.Serializer):
    message = serializers.CharField()


class ImagesDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS

    @extend_schema(operation_id="images_generate", tags=["tenant API"], request=CreateImage,
                   responses=ImagesResponse, summary="Generate images")
    def post(self, request):
        raise NotImplementedError


class TranscriptionsDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS

    @extend_schema(operation_id="audio_transcribe", tags=["tenant API"],
                   request={"multipart/form-data": CreateTranscription},
                   responses={200: OpenApiTypes.OBJECT, (200, "text/plain"): OpenApiTypes.STR},
                   summary="Transcribe audio (multipart upload up to 25 MB)")
    def post(self, request):
        raise NotImplementedError


class TranslationsDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS

    @extend_schema(operation_id="audio_translate", tags=["tenant API"],
                   request={"multipart/form-data": CreateTranscription},
                   responses={200: OpenApiTypes.OBJECT, (200, "text/plain"): OpenApiTypes.STR},
                   summary="Translate audio into English (multipart upload up to 25 MB)")
    def post(self, request):
        raise NotImplementedError


class SpeechDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS

    @extend_schema(operation_id="audio_speech", tags=["tenant API"], request=CreateSpeech,
                   responses={(200, "audio/mpeg"): OpenApiTypes.BINARY}, summary="Text to speech (streamed audio)")
    def post(self, request):
        raise NotImplementedError


class ModerationsDoc(ApiDescription):
    error_statuses = COMPLETION_ERRORS

    @extend_schema(operation_id="moderations_create", tags=["tenant API"], request=CreateModeration,
                   responses=Moderation, summary="Classify text and images as harmful or not")
    def post(self, request):
        raise NotImplementedError


class RerankV1Doc(ApiDescription):
    error_statuses = COMPLETION_ERRORS
    error_serializer = CohereError

    @extend_schema(operation_id="rerank_v1", tags=["tenant API (Cohere)"], request=Rerank,
                   responses=RerankResponse, summary="Rerank documents (Cohere's v1 format)")
    def post(self, request):
        raise NotImplementedError


class RerankV2Doc(RerankV1Doc):
    @extend_schema(operation_id="rerank_v2", tags=["tenant API (Cohere)"], request=Rerank,
                   responses=RerankResponse, summary="Rerank documents (Cohere's v2 format)")
    def post(self, request):
        raise NotImplementedError
