from django.urls import path, re_path

from accounting import api as usage_api
from caching import api as cache_api
from feedback import api as feedback_api
from gateway_site.http import api_not_found
from routing import anthropic_api, api

urlpatterns = [
    path("chat/completions", api.chat_completions, name="chat-completions"),
    path("embeddings", api.embeddings, name="embeddings"),
    path("models", api.models, name="models"),
    path("messages", anthropic_api.messages, name="messages"),
    path("messages/count_tokens", anthropic_api.count_tokens, name="messages-count-tokens"),
    path("usage", usage_api.usage, name="usage"),
    path("cache/stats", cache_api.stats, name="cache-stats"),
    path("cache", cache_api.clear, name="cache-clear"),
    path("feedback", feedback_api.feedback, name="feedback"),
    re_path(r"^.*$", api_not_found),
]
