"""Credentials as clients send them: the key of a request's headers, and the hash a key is stored
and looked up by (tenant API keys, staff tokens; never the key itself)."""

from __future__ import annotations

import hashlib


def bearer_token(headers) -> str | None:
    """The key from `Authorization: Bearer ...`, or from `x-api-key` as Anthropic clients send it."""
    authorization = headers.get("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (headers.get("x-api-key") or "").strip() or None


def api_key_hash(raw_key: str) -> str:
    """The SHA-256 of a key, in hex: what is stored and looked up."""
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()
