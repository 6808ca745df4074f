"""Seed the embedded demo: an admin, a `demo` tenant with a key, and providers to call."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from accounting.models import Tenant, TenantMembership
from accounting.services import api_key_create
from gateway_site.configuration import config_import

FAKE_MODELS = [
    {"alias": "gpt-4o-mini", "input_price_per_million": 0.15, "output_price_per_million": 0.60,
     "context_window": 128000, "max_output_tokens": 16384},
    {"alias": "gpt-4o", "input_price_per_million": 2.50, "output_price_per_million": 10.00,
     "context_window": 128000, "max_output_tokens": 16384},
    {"alias": "text-embedding-3-small", "mode": "embedding", "input_price_per_million": 0.02,
     "output_price_per_million": 0, "context_window": 8191},
]
# Images, audio and moderation, priced by their units (docs/accounting.md); modes from the catalogue.
MEDIA_MODELS = [
    {"alias": "dall-e-3", "image_prices": {"1024x1024": {"standard": 0.04, "hd": 0.08},
                                           "1792x1024": {"standard": 0.08, "hd": 0.12},
                                           "1024x1792": {"standard": 0.08, "hd": 0.12}}},
    {"alias": "whisper-1", "price_per_audio_minute": 0.006},
    {"alias": "tts-1", "price_per_million_characters": 15.0},
    {"alias": "omni-moderation-latest"},
]
CLAUDE_MODELS = [
    {"alias": "claude-haiku-4-5", "input_price_per_million": 1.00, "output_price_per_million": 5.00,
     "context_window": 200000, "max_output_tokens": 8192},
    {"alias": "claude-sonnet-4-5", "input_price_per_million": 3.00, "output_price_per_million": 15.00,
     "context_window": 200000, "max_output_tokens": 8192},
]


def demo_config(*, fake_port: int) -> dict:
    providers = [
        {"name": "fake", "type": "openai", "api_base": f"http://127.0.0.1:{fake_port}/v1",
         "api_key": "fake-key", "models": FAKE_MODELS + MEDIA_MODELS},
        {"name": "fake-anthropic", "type": "anthropic", "api_base": f"http://127.0.0.1:{fake_port}",
         "api_key": "fake-key", "models": CLAUDE_MODELS},
        {"name": "fake-cohere", "type": "cohere", "api_base": f"http://127.0.0.1:{fake_port}",
         "api_key": "fake-key", "models": [{"alias": "rerank-v3.5", "price_per_thousand_searches": 2.0}]},
    ]
    # Real providers, when their keys are in the environment, are tried before the fake one.
    if os.environ.get("OPENAI_API_KEY"):
        providers.append({"name": "openai", "type": "openai", "api_base": "https://api.openai.com/v1",
                          "api_key": "env:OPENAI_API_KEY", "priority": 10, "models": FAKE_MODELS + MEDIA_MODELS})
    if os.environ.get("ANTHROPIC_API_KEY"):
        providers.append({"name": "anthropic", "type": "anthropic", "api_base": "https://api.anthropic.com",
                          "api_key": "env:ANTHROPIC_API_KEY", "priority": 10, "models": CLAUDE_MODELS})
    return {"providers": providers, "tenants": [{"slug": "demo", "name": "Demo tenant"}]}


class Command(BaseCommand):
    help = "Create the demo admin, tenant, key and providers (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--fake-port", type=int, default=9100)

    def handle(self, *args, fake_port: int, **options):
        config_import(demo_config(fake_port=fake_port))
        self._admin()
        self._admin_membership()
        self._demo_key()

    def _admin(self) -> None:
        User = get_user_model()
        if User.objects.filter(username="admin").exists():
            self.stdout.write("Admin user: admin (password printed at first run; "
                              "reset it with: .venv/bin/python manage.py changepassword admin)")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@localhost", password)
        self.stdout.write(f"Admin user: admin  password: {password}")

    def _admin_membership(self) -> None:
        """`admin` is an admin member of `demo`: the playground and the tenant's self-service
        pages open for it at once. An admin moved to another tenant by hand stays there."""
        admin = get_user_model().objects.get(username="admin")
        TenantMembership.objects.get_or_create(
            user=admin, defaults={"tenant": Tenant.objects.get(slug="demo"), "role": TenantMembership.Role.ADMIN},
        )

    def _demo_key(self) -> None:
        tenant = Tenant.objects.get(slug="demo")
        if tenant.api_keys.filter(revoked=False).exists():
            self.stdout.write("Demo API key: printed at first run; make another with:\n"
                              "  export KEY=$(.venv/bin/python manage.py create_api_key demo | tail -n 1)")
            return
        _, raw_key = api_key_create(tenant=tenant, name="demo")
        self.stdout.write(f"Demo API key (shown once): {raw_key}\n"
                          f"Set it in your shell for the examples below:\n  export KEY={raw_key}")
