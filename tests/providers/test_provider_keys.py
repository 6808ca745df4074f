"""Provider keys: encrypted at rest, write-only in the admin, rotatable, never shown again."""

import hashlib

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from accounting.models import TenantApiKey
from accounting.services import tenant_create
from providers import crypto
from providers.models import Provider, ProviderKey
from providers.services import provider_key_upsert, provider_keys_rotate

pytestmark = pytest.mark.django_db

SECRET = "sk-live-provider-secret-abcdef123456"


@pytest.fixture
def provider():
    return Provider.objects.create(name="openai", type="openai", api_base="https://api.openai.com/v1")


def test_secret_is_encrypted_in_the_database(provider):
    key = provider_key_upsert(provider=provider, name="default", secret=SECRET)
    with connection.cursor() as cursor:
        cursor.execute("SELECT encrypted_secret FROM providers_providerkey WHERE id = %s", [key.pk])
        (stored,) = cursor.fetchone()
    assert SECRET not in stored
    assert ProviderKey.objects.get(pk=key.pk).get_secret() == SECRET
    assert SECRET not in str(key) and SECRET not in repr(key)


def test_rotation_with_multifernet_keeps_keys_readable(provider, settings):
    key = provider_key_upsert(provider=provider, name="default", secret=SECRET)
    old_token = ProviderKey.objects.get(pk=key.pk).encrypted_secret
    new_key = Fernet.generate_key().decode()
    settings.GATEWAY_ENCRYPTION_KEYS = [new_key, *settings.GATEWAY_ENCRYPTION_KEYS]
    crypto.reset()
    try:
        assert ProviderKey.objects.get(pk=key.pk).get_secret() == SECRET  # old key still decrypts
        assert provider_keys_rotate() == 1
        rotated = ProviderKey.objects.get(pk=key.pk)
        assert rotated.encrypted_secret != old_token
        assert Fernet(new_key).decrypt(rotated.encrypted_secret.encode()).decode() == SECRET
    finally:
        crypto.reset()


def test_admin_never_renders_the_secret_and_blank_keeps_it(admin_client, provider):
    response = admin_client.post(
        "/admin/providers/providerkey/add/",
        {"provider": provider.pk, "name": "default", "secret": SECRET, "enabled": "on"},
    )
    assert response.status_code == 302, response.content
    key = ProviderKey.objects.get()
    assert key.get_secret() == SECRET
    for url in ("/admin/providers/providerkey/", f"/admin/providers/providerkey/{key.pk}/change/"):
        page = admin_client.get(url)
        assert page.status_code == 200
        assert SECRET not in page.content.decode()
        assert key.encrypted_secret not in page.content.decode()
    admin_client.post(
        f"/admin/providers/providerkey/{key.pk}/change/",
        {"provider": provider.pk, "name": "default", "secret": "", "enabled": "on"},
    )
    assert ProviderKey.objects.get().get_secret() == SECRET


def test_admin_requires_a_secret_for_a_new_key(admin_client, provider):
    response = admin_client.post(
        "/admin/providers/providerkey/add/", {"provider": provider.pk, "name": "default", "secret": ""}
    )
    assert response.status_code == 200
    assert "A new key needs its secret." in response.content.decode()
    assert not ProviderKey.objects.exists()


def test_admin_shows_a_new_tenant_key_once(admin_client):
    tenant = tenant_create(slug="acme")
    response = admin_client.post(
        "/admin/accounting/tenantapikey/add/",
        {"tenant": tenant.pk, "name": "ci", "allowed_models": "gpt-4o-mini", "expires_at": ""},
        follow=True,
    )
    text = response.content.decode()
    key = TenantApiKey.objects.get()
    start = text.index("sk-gw-")
    raw = text[start:start + 49].split("<")[0].split()[0]
    assert hashlib.sha256(raw.encode()).hexdigest() == key.hashed_key
    assert key.allowed_models == ["gpt-4o-mini"]
    again = admin_client.get(f"/admin/accounting/tenantapikey/{key.pk}/change/").content.decode()
    assert raw not in again
