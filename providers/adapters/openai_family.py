"""Where OpenAI-compatible services differ from OpenAI, known by the host of their `api_base`.

Each service accepts most of OpenAI's chat parameters but not all, and a few spell or report
things differently. What is listed here is what their documentation said when it was written;
an operator adds to it per provider (`Provider.unsupported_params`) and chooses whether such a
parameter is dropped or answered with a 400 naming it (`Provider.unsupported_param_policy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlparse

# Parameters only OpenAI itself understands (its own products and billing).
OPENAI_ONLY = frozenset({
    "service_tier", "store", "prediction", "web_search_options", "modalities", "audio",
    "prompt_cache_key", "safety_identifier", "verbosity", "metadata",
})


@dataclass(frozen=True)
class Quirks:
    name: str
    unsupported: frozenset[str] = frozenset()
    renamed: dict[str, str] = field(default_factory=dict)
    # False: the service rejects `stream_options` and reports usage in its last chunk anyway.
    stream_options: bool = True
    # Where a service puts stream usage instead of `usage` (Groq: `x_groq.usage`).
    usage_container: str = ""


OPENAI = Quirks("openai")
GENERIC = Quirks("openai-compatible", unsupported=OPENAI_ONLY)

BY_HOST = {
    "api.openai.com": OPENAI,
    # https://docs.mistral.ai/api/ : `random_seed`, no stream_options (usage comes in the last chunk)
    "api.mistral.ai": Quirks(
        "mistral",
        unsupported=OPENAI_ONLY | {"logit_bias", "logprobs", "top_logprobs", "user", "reasoning_effort"},
        renamed={"seed": "random_seed", "max_completion_tokens": "max_tokens"},
        stream_options=False,
    ),
    # https://console.groq.com/docs/openai : no logprobs or logit_bias; usage under x_groq
    "api.groq.com": Quirks(
        "groq", unsupported=OPENAI_ONLY | {"logit_bias", "logprobs", "top_logprobs"}, usage_container="x_groq"
    ),
    "openrouter.ai": Quirks("openrouter", unsupported=OPENAI_ONLY - {"metadata"}),
    "api.together.xyz": Quirks("together", unsupported=OPENAI_ONLY),
}
# Ollama's OpenAI-compatible API (https://github.com/ollama/ollama/blob/main/docs/openai.md)
OLLAMA = Quirks("ollama", unsupported=OPENAI_ONLY | {"logit_bias", "logprobs", "top_logprobs", "n"})
OLLAMA_PORT = 11434


@lru_cache(maxsize=1024)  # asked per request and per stream chunk; urlparse is not free
def quirks_for(api_base: str) -> Quirks:
    parsed = urlparse(api_base)
    if parsed.port == OLLAMA_PORT:
        return OLLAMA
    return BY_HOST.get(parsed.hostname or "", GENERIC if parsed.hostname not in ("127.0.0.1", "localhost") else OPENAI)
