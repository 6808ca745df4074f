"""The registry of wire-format adapters: adding a provider type is one module and one line here."""

from providers.adapters.anthropic import AnthropicAdapter
from providers.adapters.azure import AzureOpenAIAdapter
from providers.adapters.base import (
    Adapter,
    AudioUpload,
    ChatResult,
    MediaResult,
    SSEEvent,
    Target,
    Units,
    UpstreamRequest,
    Usage,
)
from providers.adapters.cohere import CohereAdapter
from providers.adapters.gemini import GeminiAdapter
from providers.adapters.openai import OpenAIAdapter
from providers.adapters.tei import TEIAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "cohere": CohereAdapter,
    "azure": AzureOpenAIAdapter,
    "gemini": GeminiAdapter,
    "tei": TEIAdapter,
}

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AudioUpload",
    "ChatResult",
    "MediaResult",
    "SSEEvent",
    "Target",
    "Units",
    "UpstreamRequest",
    "Usage",
]
