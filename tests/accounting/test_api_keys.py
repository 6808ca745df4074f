import hashlib
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounting.models import Tenant, TenantApiKey
from accounting.services import api_key_create, tenant_create

pytestmark = pytest.mark.django_db


def test_key_is_stored_only_as_hash_with_visible_prefix():
    tenant = tenant_create(slug="acme")
    key, raw = api_key_create(tenant=tenant, name="ci", allowed_models=["b", "a", "a"])
    assert raw.startswith("sk-gw-") and len(raw) > 40
    key.refresh_from_db()
    assert key.hashed_key == hashlib.sha256(raw.encode()).hexdigest()
    assert key.prefix == raw[:12]
    assert key.allowed_models == ["a", "b"]
    stored = [str(value) for value in TenantApiKey.objects.values_list().get(pk=key.pk)]
    assert not any(raw in value for value in stored)


def test_create_tenant_and_create_api_key_commands():
    out = StringIO()
    call_command("create_tenant", "acme", "--name", "Acme Corp", stdout=out)
    assert Tenant.objects.get(slug="acme").name == "Acme Corp"
    out = StringIO()
    call_command("create_api_key", "acme", "--name", "ci", "--models", "gpt-4o-mini, gpt-4o", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    key = TenantApiKey.objects.get(hashed_key=hashlib.sha256(raw.encode()).hexdigest())
    assert key.name == "ci" and key.allowed_models == ["gpt-4o", "gpt-4o-mini"]
    assert key.tenant.slug == "acme"


def test_commands_fail_clearly():
    with pytest.raises(CommandError, match="No tenant 'ghost'"):
        call_command("create_api_key", "ghost", stdout=StringIO())
    call_command("create_tenant", "acme", stdout=StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_tenant", "acme", stdout=StringIO())
    with pytest.raises(CommandError, match="not a valid slug"):
        call_command("create_tenant", "no spaces", stdout=StringIO())
