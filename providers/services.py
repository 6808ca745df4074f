"""Writes of the providers app."""

from __future__ import annotations

from django.db import transaction

from providers import crypto
from providers.models import Provider, ProviderKey


def provider_key_save(*, key: ProviderKey, secret: str | None) -> ProviderKey:
    """Save a key, encrypting a new secret if one is given (a blank one keeps the old secret)."""
    if secret:
        key.set_secret(secret)
    if not key.encrypted_secret:
        raise ValueError("A provider key needs a secret.")
    key.save()
    return key


def provider_key_upsert(*, provider: Provider, name: str, secret: str, source: str = "") -> ProviderKey:
    key = ProviderKey.objects.filter(provider=provider, name=name).first() or ProviderKey(
        provider=provider, name=name
    )
    key.source = source
    return provider_key_save(key=key, secret=secret)


@transaction.atomic
def provider_keys_rotate() -> int:
    """Re-encrypt every provider key under the newest GATEWAY_ENCRYPTION_KEY; returns the count."""
    keys = list(ProviderKey.objects.select_for_update())
    for key in keys:
        key.encrypted_secret = crypto.rotate(key.encrypted_secret)
        key.save(update_fields=["encrypted_secret", "updated_at"])
    return len(keys)
