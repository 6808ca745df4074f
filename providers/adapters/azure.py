"""Azure OpenAI: OpenAI's wire format, reached through a resource, a deployment and an api-version.

`target.api_base` is the resource URL (`https://{resource}.openai.azure.com`) and
`target.upstream_model` is the *deployment* name, which Azure puts in the path:
`{api_base}/openai/deployments/{deployment}/chat/completions?api-version=...` (and
`/embeddings`). The key goes in an `api-key` header. The api-version is
`settings.GATEWAY_AZURE_API_VERSION` (default below), unless the provider's `api_base` carries
its own `?api-version=`, which wins.

Bodies are OpenAI's, with Azure's content filter on top
(https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-filter): a filtered prompt
is a 400 with `code: "content_filter"` (content_filtered, mapped by the OpenAI adapter), a
filtered answer ends with `finish_reason: "content_filter"` (passed through), and answers carry
`prompt_filter_results` / `content_filter_results` annotations (passed through). A stream opens
with a chunk holding only `prompt_filter_results` and no choices, and may send annotation-only
chunks later: those carry nothing for the client and are skipped.

Reference: https://learn.microsoft.com/azure/ai-foundry/openai/reference
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

from django.conf import settings

from providers.adapters.base import SSEEvent, Target
from providers.adapters.openai import OpenAIAdapter
from providers.adapters.openai_family import OPENAI_ONLY

# The latest GA data-plane inference version with dated api-versions (it has `stream_options`,
# structured outputs, `max_completion_tokens` and `parallel_tool_calls`), per
# https://learn.microsoft.com/azure/ai-foundry/openai/api-version-lifecycle
DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIAdapter(OpenAIAdapter):
    wire_type = "azure"

    def _headers(self, target: Target) -> dict[str, str]:
        return {"api-key": target.api_key} if target.api_key else {}

    def _url(self, target: Target, path: str) -> str:
        base, version = _base_and_version(target.api_base)
        deployment = quote(target.upstream_model, safe="")
        query = urlencode({"api-version": version})
        return f"{base}/openai/deployments/{deployment}/{path}?{query}"

    def unsupported(self, target: Target) -> frozenset[str]:
        # The GA api-version serves OpenAI's core chat parameters, not its account features
        # (store, metadata, service_tier, predicted outputs, audio, web search...).
        return target.unsupported_params | OPENAI_ONLY

    async def chat_stream_chunks(
        self, events: AsyncIterator[SSEEvent], target: Target
    ) -> AsyncIterator[dict]:
        async for chunk in super().chat_stream_chunks(events, target):
            if _carries_something(chunk):
                yield chunk


def _base_and_version(api_base: str) -> tuple[str, str]:
    """The resource URL without query, and the api-version: the one in `api_base`, or the setting."""
    parts = urlsplit(api_base)
    given = parse_qs(parts.query).get("api-version", [""])[-1]
    version = given or getattr(settings, "GATEWAY_AZURE_API_VERSION", DEFAULT_API_VERSION)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")), version


def _carries_something(chunk: dict) -> bool:
    """A usage report, a finish reason, or a delta with anything in it (role, text, tool calls)."""
    if chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if choice.get("finish_reason") or (
            isinstance(delta, dict) and any(value is not None for value in delta.values())
        ):
            return True
    return False
