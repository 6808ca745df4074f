"""Token estimates, for when a provider reports no usage.

Provider-reported usage is always the truth; these counts are only used when a provider or a
broken stream gives none, and the UsageRecord is then marked `usage_estimated`. The encoding
must be loadable offline (see `GATEWAY_TOKEN_ENCODING`).
"""

from __future__ import annotations

from functools import cache

import tiktoken
from django.conf import settings

# OpenAI's documented accounting: every message costs a few tokens of framing, and every reply
# is primed with a few more (https://cookbook.openai.com, "How to count tokens with tiktoken").
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


@cache
def _encoding() -> tiktoken.Encoding:
    encoding = tiktoken.get_encoding(settings.GATEWAY_TOKEN_ENCODING)
    # tiktoken keeps the ranks twice: in its Rust core, which encodes, and in a Python dict
    # (about 10 MB in every worker for cl100k) that only pickling the encoding reads. The
    # gateway never pickles it.
    encoding.__dict__.pop("_mergeable_ranks", None)
    return encoding


def text_tokens(text: str) -> int:
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def prompt_tokens(messages: list[dict]) -> int:
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + text_tokens(message_text(message.get("content")))
        total += text_tokens(str(message.get("name") or ""))
    return total


def embedding_input_tokens(value: object) -> int:
    if isinstance(value, str):
        return text_tokens(value)
    if isinstance(value, list):
        if all(isinstance(item, int) for item in value):
            return len(value)
        return sum(embedding_input_tokens(item) for item in value)
    return 0
