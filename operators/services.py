"""Writes of the operators app: staff tokens."""

from __future__ import annotations

import secrets

from kernel.credentials import api_key_hash
from operators.models import StaffToken

STAFF_TOKEN_PREFIX = "sk-op-"
VISIBLE_PREFIX_LENGTH = 12


def staff_token_create(*, user, name: str = "default") -> tuple[StaffToken, str]:
    """Create a token for a staff user and return it with its plaintext, never available again."""
    if not (user.is_active and user.is_staff):
        raise ValueError(f"{user.get_username()} is not an active staff user.")
    raw = STAFF_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = StaffToken.objects.create(
        user=user, name=name, prefix=raw[:VISIBLE_PREFIX_LENGTH], hashed_key=api_key_hash(raw)
    )
    return token, raw


def staff_token_revoke(*, token: StaffToken) -> None:
    token.revoked = True
    token.save(update_fields=["revoked"])
