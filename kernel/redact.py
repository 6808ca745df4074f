"""Secrets out of text the gateway did not write itself: upstream errors, log lines, access logs.

An upstream may quote the key it was sent in its error message (OpenAI's 401 quotes a masked
`sk-proj-****abcd`; a misbehaving proxy quotes it whole), and a client may put its key in a URL's
query string, which servers write to their access logs. `secrets_redact` is the one scrubber:
providers' errors pass through it when they become a `ProviderError` (so the tenant's answer, the
UsageRecord, the deployment's health and the logs only ever see the scrubbed text), and the log
formatters and the access logs run every line through it.

What goes: the exact secret the caller names (the provider key used for the call), and anything
shaped like a key: `sk-…` (OpenAI's `sk-proj-…`, Anthropic's `sk-ant-…`, the gateway's own
`sk-gw-…` and `sk-op-…`, masked forms with `*`), Google's `AIza…`, the token of `Bearer <token>`,
and the value of `api_key=`, `key=` and `token=` in a query string.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
# Shorter secrets are not looked for as such: they would blank ordinary words (test keys like "x").
SECRET_MIN_CHARS = 8

_KEY_SHAPES = re.compile(
    r"(?i)\b(bearer\s+)[^\s\"',]+"
    r"|\bsk-[A-Za-z0-9_*\-]{3,}"
    r"|\bAIza[A-Za-z0-9_\-]{8,}"
    r"|([?&](?:api_key|key|token)=)[^&\s\"'#]*"
)
# Substrings (lowercase) without which no shape can match: most text has none, and looking for
# them is far cheaper than the search itself.
_HINTS = ("sk-", "bearer", "aiza", "key=", "token=")


def _replace(match: re.Match) -> str:
    return f"{match.group(1) or match.group(2) or ''}{REDACTED}"


def secrets_redact(text: str, *, secret: str = "") -> str:
    """`text` with `secret` (when at least `SECRET_MIN_CHARS` long) and key-shaped strings
    replaced by `[redacted]`; `Bearer ` and `key=`-like names stay, so the line still says what
    was there."""
    if len(secret) >= SECRET_MIN_CHARS and secret in text:
        text = text.replace(secret, REDACTED)
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS):
        return text
    return _KEY_SHAPES.sub(_replace, text)
