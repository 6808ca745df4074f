"""One cache policy per scope, an absent tenant or rule counting as one value (a unique index on
COALESCE(id, 0), which SQLite builds too: no W047 on the embedded database)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounting.services import tenant_create
from caching.models import CachePolicy

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("scoped", [False, True])
def test_a_second_policy_of_one_scope_is_refused(scoped):
    tenant = tenant_create(slug="acme") if scoped else None
    CachePolicy.objects.create(name="first", tenant=tenant)
    with pytest.raises(ValidationError, match="already exists"):
        CachePolicy(name="second", tenant=tenant).validate_constraints()
    with pytest.raises(IntegrityError), transaction.atomic():
        CachePolicy.objects.create(name="second", tenant=tenant)


def test_other_scopes_are_free():
    CachePolicy.objects.create(name="default")
    CachePolicy.objects.create(name="acme", tenant=tenant_create(slug="acme"))
    CachePolicy.objects.create(name="globex", tenant=tenant_create(slug="globex"))
    assert CachePolicy.objects.count() == 3


def test_the_model_checks_clean_on_this_database():
    """On SQLite too: `make run` (tests/e2e/test_make_run.py) prints no W047."""
    from django.core import checks
    from django.db import connection

    assert not [m for m in CachePolicy.check(databases=[connection.alias]) if m.level >= checks.WARNING]
