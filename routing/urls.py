from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from accounting import api as usage_api
from batches.urls import batch_api_patterns
from accounting.openapi import UsageDoc
from caching import api as cache_api
from caching.openapi import CacheClearDoc, CacheStatsDoc
from feedback import api as feedback_api
from feedback.openapi import FeedbackDoc
from kernel.http import api_not_found
from kernel.openapi import documented
from routing import anthropic_api, api, media_api, responses_api
from routing import openapi as docs

# The tenant API: the routes a tenant key calls, with nothing of a browser's session. This list is
# the one source of their paths: gateway_site/asgi.py serves them with their own ASGI app before
# Django (gateway_site/api_app.py), and gateway_site/urls.py includes the same list in the URLconf
# for the OpenAPI schema and `reverse()`.
tenant_api_patterns = [
    path("v1/chat/completions", documented(api.chat_completions, docs.ChatCompletionsDoc), name="chat-completions"),
    path("v1/completions", documented(api.completions, docs.CompletionsDoc), name="completions"),
    path("v1/embeddings", documented(api.embeddings, docs.EmbeddingsDoc), name="embeddings"),
    path("v1/models", documented(api.models, docs.ModelsDoc), name="models"),
    path("v1/images/generations", documented(media_api.images_generations, docs.ImagesDoc), name="images-generations"),
    path("v1/audio/transcriptions", documented(media_api.audio_transcriptions, docs.TranscriptionsDoc),
         name="audio-transcriptions"),
    path("v1/audio/translations", documented(media_api.audio_translations, docs.TranslationsDoc),
         name="audio-translations"),
    path("v1/audio/speech", documented(media_api.audio_speech, docs.SpeechDoc), name="audio-speech"),
    path("v1/moderations", documented(media_api.moderations, docs.ModerationsDoc), name="moderations"),
    path("v1/rerank", documented(media_api.rerank_v1, docs.RerankV1Doc), name="rerank-v1"),
    path("v2/rerank", documented(media_api.rerank_v2, docs.RerankV2Doc), name="rerank-v2"),
    path("v1/messages", documented(anthropic_api.messages, docs.MessagesDoc), name="messages"),
    path("v1/messages/count_tokens", documented(anthropic_api.count_tokens, docs.CountTokensDoc),
         name="messages-count-tokens"),
    path("v1/usage", documented(usage_api.usage, UsageDoc), name="usage"),
    path("v1/feedback", documented(feedback_api.feedback, FeedbackDoc), name="feedback"),
    path("v1/responses", documented(responses_api.responses, docs.ResponsesDoc), name="responses"),
    path("v1/responses/input_tokens", documented(responses_api.response_input_tokens, docs.ResponseInputTokensDoc),
         name="response-input-tokens"),
    path("v1/responses/<str:response_id>", documented(responses_api.response_detail, docs.ResponseDetailDoc),
         name="response-detail"),
    path("v1/responses/<str:response_id>/input_items",
         documented(responses_api.response_input_items, docs.ResponseInputItemsDoc), name="response-input-items"),
    path("v1/responses/<str:response_id>/cancel",
         documented(responses_api.response_cancel, docs.ResponseCancelDoc), name="response-cancel"),
    *batch_api_patterns,
]


def tenant_api_routes() -> dict:
    """{"/v1/models": view, ...}: the tenant API's exact paths for `gateway_site.api_app.ApiApplication`."""
    return {f"/{route.pattern}": route.callback for route in tenant_api_patterns if "<" not in str(route.pattern)}


def tenant_api_parameterised() -> list:
    """The tenant API's routes with parameters in their path (`v1/responses/<str:response_id>`),
    for `ApiApplication`'s `patterns`."""
    return [route for route in tenant_api_patterns if "<" in str(route.pattern)]


# The cache's routes take a tenant key or an operator's staff token (caching/api.py): Django's.
urlpatterns = [
    path("cache/stats", documented(cache_api.stats, CacheStatsDoc), name="cache-stats"),
    path("cache", documented(cache_api.clear, CacheClearDoc), name="cache-clear"),
]

# Whatever neither the tenant API nor the operator API has under /v1/: the API's own 404, not
# Django's page (included last in gateway_site/urls.py). Exempt from CSRF so that a POST gets
# the 404 too, not a 403 for a session token it was never meant to carry.
not_found_patterns = [re_path(r"^.*$", csrf_exempt(api_not_found))]
