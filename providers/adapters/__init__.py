"""The registry of wire-format adapters: adding a provider type is one module and one line here."""

from providers.adapters.anthropic import AnthropicAdapter
from providers.adapters.base import (
    Adapter,
    ChatResult,
    SSEEvent,
    Target,
    UpstreamRequest,
    Usage,
)
from providers.adapters.openai import OpenAIAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
}

__all__ = [
    "ADAPTERS",
    "Adapter",
    "ChatResult",
    "SSEEvent",
    "Target",
    "UpstreamRequest",
    "Usage",
]
