"""A staff user of the `Gateway operators` group with a staff token, and a Django test client
speaking JSON with it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from django.test import Client

from tests.conftest import role_join


@dataclass
class Operator:
    user: object
    token: str
    client: Client

    def call(self, method: str, path: str, body=None, *, token: str | None = None):
        token = self.token if token is None else token
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
        data = json.dumps(body) if body is not None else None
        return getattr(self.client, method.lower())(path, data=data, content_type="application/json", **headers)


@pytest.fixture
def operator(db) -> Operator:
    from django.contrib.auth.models import User

    from operators.services import staff_token_create

    user = User.objects.create_user("ops", password="x", is_staff=True)
    role_join(user, "Gateway operators")
    _, raw = staff_token_create(user=user, name="ci")
    return Operator(user=user, token=raw, client=Client())
