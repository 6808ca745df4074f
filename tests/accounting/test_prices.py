"""The price catalogue, dated prices, and costs that never move when prices change."""

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounting.prices import CATALOGUE, catalogue_load, catalogue_match
from accounting.pricing import cost_compute
from providers.models import ModelPrice, Provider, ProviderModel
from providers.selectors import catalog_build

pytestmark = pytest.mark.django_db


@pytest.fixture
def models():
    provider = Provider.objects.create(name="openai", api_base="https://api.openai.com/v1")
    mini = ProviderModel.objects.create(
        provider=provider, alias="mini", upstream_model="gpt-4o-mini-2024-07-18",
        input_price_per_million=Decimal("9"), output_price_per_million=Decimal("9"),
    )
    custom = ProviderModel.objects.create(provider=provider, alias="custom", upstream_model="my-finetune")
    return mini, custom


def test_the_shipped_catalogue_loads_and_matches_dated_snapshots():
    catalogue = catalogue_load(CATALOGUE)
    assert catalogue["gpt-4o-mini"].input == Decimal("0.15")
    assert catalogue["claude-sonnet-4-5"].cached_input == Decimal("0.30")
    assert catalogue_match("gpt-4o-mini-2024-07-18", catalogue) == "gpt-4o-mini"
    assert catalogue_match("gpt-4o-2024-08-06", catalogue) == "gpt-4o"
    assert catalogue_match("claude-haiku-4-5-20251001", catalogue) == "claude-haiku-4-5"
    assert catalogue_match("gpt-4o-minion", catalogue) is None
    assert catalogue_match("gpt-4o-audio-preview", catalogue) is None  # a variant, not a snapshot


def test_load_prices_adds_dated_rows_once(models):
    mini, custom = models
    out = StringIO()
    call_command("load_prices", stdout=out)
    assert "Changed 1 model price(s)" in out.getvalue()
    row = ModelPrice.objects.get(provider_model=mini)
    assert (row.input_price_per_million, row.output_price_per_million) == (Decimal("0.15"), Decimal("0.6"))
    assert row.cached_input_price_per_million == Decimal("0.075") and row.source == "catalogue"
    assert not ModelPrice.objects.filter(provider_model=custom).exists()
    out = StringIO()
    call_command("load_prices", stdout=out)
    assert "Changed 0 model price(s)" in out.getvalue()
    assert ModelPrice.objects.count() == 1


def test_dry_run_writes_nothing(models):
    out = StringIO()
    call_command("load_prices", "--dry-run", stdout=out)
    assert "Would change 1" in out.getvalue() and not ModelPrice.objects.exists()


def test_bad_catalogue_and_date_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {gpt-x: {output: 1}}")
    with pytest.raises(CommandError, match="numeric 'input'"):
        call_command("load_prices", "--file", str(bad), stdout=StringIO())
    with pytest.raises(CommandError, match="not an ISO date"):
        call_command("load_prices", "--effective-from", "soon", stdout=StringIO())


def test_the_price_in_force_follows_effective_dates(models):
    mini, _ = models
    now = datetime.now(dt_timezone.utc)
    ModelPrice.objects.create(provider_model=mini, effective_from=now - timedelta(days=30),
                              input_price_per_million=1, output_price_per_million=2)
    ModelPrice.objects.create(provider_model=mini, effective_from=now + timedelta(days=1),
                              input_price_per_million=5, output_price_per_million=6)
    deployment = catalog_build().by_model_id[mini.pk]
    assert deployment.price_at(now.timestamp()).input_per_million == 1  # the future change waits
    assert deployment.price_at((now + timedelta(days=2)).timestamp()).output_per_million == 6
    assert deployment.price_at((now - timedelta(days=60)).timestamp()).input_per_million == 9


def test_cached_prompt_tokens_cost_the_cached_price(models):
    mini, _ = models
    ModelPrice.objects.create(
        provider_model=mini, effective_from=datetime(2020, 1, 1, tzinfo=dt_timezone.utc),
        input_price_per_million=Decimal("2"), output_price_per_million=Decimal("8"),
        cached_input_price_per_million=Decimal("0.5"),
    )
    price = catalog_build().by_model_id[mini.pk].price_at(datetime.now(dt_timezone.utc).timestamp())
    cost = cost_compute(price=price, prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=400_000)
    assert cost == Decimal("600000") * 2 / 10**6 + Decimal("400000") * Decimal("0.5") / 10**6 + 4
