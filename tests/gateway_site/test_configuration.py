from io import StringIO

import pytest
import yaml
from django.core.management import CommandError, call_command

from accounting.models import Tenant
from providers.models import Provider, ProviderKey, ProviderModel

pytestmark = pytest.mark.django_db

CONFIG = """
providers:
  - name: local-fake
    type: openai          # openai | anthropic (more later)
    api_base: http://127.0.0.1:9100/v1
    api_key: env:FAKE_PROVIDER_KEY
    models:
      - alias: gpt-4o-mini
        upstream: gpt-4o-mini
        input_price_per_million: 0.15
        output_price_per_million: 0.60
        context_window: 128000
  - name: claude
    type: anthropic
    api_base: http://127.0.0.1:9100
    api_key: sk-ant-literal-secret-1234
    models:
      - alias: claude-haiku-4-5
        input_price_per_million: 1
        output_price_per_million: 5
tenants:
  - slug: acme
    name: Acme Corp
"""


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_PROVIDER_KEY", "sk-from-env-5678")
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    return path


def test_import_creates_everything_and_is_idempotent(config_file):
    call_command("import_config", str(config_file), stdout=StringIO())
    call_command("import_config", str(config_file), stdout=StringIO())
    assert Provider.objects.count() == 2 and ProviderModel.objects.count() == 2
    assert ProviderKey.objects.count() == 2 and Tenant.objects.count() == 1
    model = ProviderModel.objects.get(alias="gpt-4o-mini")
    assert str(model.input_price_per_million) == "0.150000" and model.context_window == 128000
    assert model.provider.type == "openai"
    assert ProviderModel.objects.get(alias="claude-haiku-4-5").upstream_model == "claude-haiku-4-5"
    env_key = ProviderKey.objects.get(provider__name="local-fake")
    assert env_key.get_secret() == "sk-from-env-5678" and env_key.source == "env:FAKE_PROVIDER_KEY"
    assert "sk-from-env" not in env_key.encrypted_secret
    assert Tenant.objects.get(slug="acme").name == "Acme Corp"


def test_export_round_trips_and_never_contains_secrets(config_file):
    call_command("import_config", str(config_file), stdout=StringIO())
    out = StringIO()
    call_command("export_config", stdout=out)
    text = out.getvalue()
    assert "sk-from-env-5678" not in text and "sk-ant-literal-secret-1234" not in text
    exported = yaml.safe_load(text)
    fake = next(p for p in exported["providers"] if p["name"] == "local-fake")
    assert fake["api_key"] == "env:FAKE_PROVIDER_KEY"
    assert "api_key" not in next(p for p in exported["providers"] if p["name"] == "claude")
    assert fake["models"][0]["alias"] == "gpt-4o-mini"
    # Re-importing the export changes nothing and keeps the stored literal secret.
    config_file.write_text(text)
    call_command("import_config", str(config_file), stdout=StringIO())
    assert ProviderKey.objects.get(provider__name="claude").get_secret() == "sk-ant-literal-secret-1234"


@pytest.mark.parametrize(
    "text, message",
    [
        ("providers: [{name: x, type: nope, api_base: http://h}]", "providers\\[0\\].type"),
        ("providers: [{name: x, api_base: http://h, api_key: env:NOT_SET_ANYWHERE}]", "NOT_SET_ANYWHERE"),
        ("providers: [{name: x, api_base: http://h, models: [{alias: m, input_price_per_million: -1}]}]", "input_price"),
        ("tenants: [{slug: a, colour: red}]", "colour"),
        ("tenants: [{slug: a, rate_limit: {tpm: 3000000000}}]", "tpm must be at most 2147483647"),
        ("providers: [{name: x, api_base: http://h, models: [{alias: m, context_window: 9999999999}]}]",
         "context_window must be at most"),
        ("[1, 2]", "mapping"),
        ("providers: {", "not valid YAML"),
    ],
)
def test_import_rejects_bad_files_clearly_and_writes_nothing(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CommandError, match=message):
        call_command("import_config", str(path), stdout=StringIO())
    assert Provider.objects.count() == 0 and Tenant.objects.count() == 0


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("import_config", str(tmp_path / "missing.yaml"), stdout=StringIO())
