from django.urls import path, re_path

from accounting import api as usage_api
from accounting.openapi import UsageDoc
from caching import api as cache_api
from caching.openapi import CacheClearDoc, CacheStatsDoc
from feedback import api as feedback_api
from feedback.openapi import FeedbackDoc
from gateway_site.http import api_not_found
from gateway_site.openapi import documented
from routing import anthropic_api, api
from routing import openapi as docs

urlpatterns = [
    path("chat/completions", documented(api.chat_completions, docs.ChatCompletionsDoc), name="chat-completions"),
    path("embeddings", documented(api.embeddings, docs.EmbeddingsDoc), name="embeddings"),
    path("models", documented(api.models, docs.ModelsDoc), name="models"),
    path("messages", documented(anthropic_api.messages, docs.MessagesDoc), name="messages"),
    path("messages/count_tokens", documented(anthropic_api.count_tokens, docs.CountTokensDoc),
         name="messages-count-tokens"),
    path("usage", documented(usage_api.usage, UsageDoc), name="usage"),
    path("cache/stats", documented(cache_api.stats, CacheStatsDoc), name="cache-stats"),
    path("cache", documented(cache_api.clear, CacheClearDoc), name="cache-clear"),
    path("feedback", documented(feedback_api.feedback, FeedbackDoc), name="feedback"),
]

# Whatever neither the tenant API nor the operator API has under /v1/: the API's own 404, not
# Django's page (included last in gateway_site/urls.py).
not_found_patterns = [re_path(r"^.*$", api_not_found)]
