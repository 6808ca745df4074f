"""Prices by the unit (docs/accounting.md "Prices by the unit"): the cost of images, audio seconds,
characters and searches; the catalogue's unit prices applied as dated rows by `load_prices`, once;
`import_config` / `export_config` carry them and refuse bad ones; the admin validates image prices."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
import yaml
from django.core.exceptions import ValidationError
from django.core.management import call_command

from accounting.pricing import units_cost
from gateway_site.configuration import config_export, config_import
from kernel.config_shape import ConfigError
from providers.adapters import Units
from providers.models import ModelPrice, Provider, ProviderModel
from providers.selectors import Price, UnitPrices, catalog_build

ZERO = Decimal("0")


def price(**units) -> Price:
    return Price(input_per_million=ZERO, output_per_million=ZERO, units=UnitPrices(**units))


@pytest.mark.parametrize(("units", "prices", "cost"), [
    (Units("image", Decimal(2), "1024x1024", "hd"), {"images": {"1024x1024": {"standard": 0.04, "hd": 0.08}}}, "0.16"),
    (Units("image", Decimal(1), "1024x1024", ""), {"images": {"1024x1024": {"standard": 0.04, "hd": 0.08}}}, "0.04"),
    (Units("image", Decimal(3), "256x256", ""), {"images": {"256x256": 0.016}}, "0.048"),
    (Units("image", Decimal(1), "1024x1024", "auto"), {"images": {"1024x1024": {"low": 0.011, "high": 0.167}}}, "0.167"),
    (Units("image", Decimal(3), "512x512", ""), {"images": {"256x256": 0.016}, "per_image": Decimal("0.02")}, "0.06"),
    (Units("audio_second", Decimal("90"), ), {"per_audio_minute": Decimal("0.006")}, "0.009"),
    (Units("character", Decimal(1000)), {"per_million_characters": Decimal("15")}, "0.015"),
    (Units("search", Decimal(3)), {"per_thousand_searches": Decimal("2")}, "0.006"),
    (Units("search", Decimal(3)), {}, "0"),  # no price for the unit: it costs nothing
])
def test_units_cost(units, prices, cost):
    assert units_cost(price=price(**prices), units=units) == Decimal(cost)


@pytest.mark.django_db
def test_load_prices_applies_the_catalogues_unit_prices_once():
    provider = Provider.objects.create(name="openai", api_base="https://api.openai.com/v1")
    tts = ProviderModel.objects.create(provider=provider, alias="tts", upstream_model="tts-1")
    dalle = ProviderModel.objects.create(provider=provider, alias="img", upstream_model="dall-e-3")
    assert (tts.mode, dalle.mode) == ("speech", "image")
    out = StringIO()
    call_command("load_prices", stdout=out)
    assert "price_per_million_characters 15" in out.getvalue()
    assert ModelPrice.objects.get(provider_model=tts).price_per_million_characters == Decimal("15")
    assert ModelPrice.objects.get(provider_model=dalle).image_prices["1792x1024"] == {"standard": 0.08, "hd": 0.12}
    out = StringIO()
    call_command("load_prices", stdout=out)
    assert "Changed 0 model price(s)" in out.getvalue()
    deployment = next(d for d in catalog_build().deployments if d.alias == "tts")
    assert deployment.price_at(4_102_444_800.0).units.per_million_characters == Decimal("15")


CONFIG = """
providers:
  - name: media
    type: openai
    api_base: https://api.openai.com/v1
    models:
      - alias: img
        upstream: dall-e-2
        price_per_image: 0.02
        image_prices: {"256x256": 0.016, "1024x1024": {standard: 0.04}}
      - alias: whisper
        upstream: whisper-1
        price_per_audio_minute: 0.006
      - alias: rr
        upstream: rerank-v3.5
        price_per_thousand_searches: 2
"""


@pytest.mark.django_db
def test_import_and_export_carry_unit_prices():
    config_import(yaml.safe_load(CONFIG))
    img = ProviderModel.objects.get(alias="img")
    assert (img.mode, img.price_per_image, img.image_prices) == (
        "image", Decimal("0.02"), {"256x256": 0.016, "1024x1024": {"standard": 0.04}})
    assert ProviderModel.objects.get(alias="whisper").price_per_audio_minute == Decimal("0.006")
    exported = {m["alias"]: m for m in config_export()["providers"][0]["models"]}
    assert exported["img"]["price_per_image"] == 0.02 and exported["img"]["image_prices"]["256x256"] == 0.016
    assert exported["rr"]["price_per_thousand_searches"] == 2.0 and exported["rr"]["mode"] == "rerank"
    assert "price_per_image" not in exported["whisper"]
    config_import(config_export())  # what is exported imports back unchanged
    assert ProviderModel.objects.get(alias="img").image_prices == img.image_prices


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["price_per_image: -1", "price_per_audio_minute: lots", "image_prices: [1, 2]",
                                 'image_prices: {"256x256": {hd: -2}}'])
def test_bad_unit_prices_are_refused(bad):
    config = CONFIG.replace("price_per_thousand_searches: 2", bad)
    with pytest.raises(ConfigError):
        config_import(yaml.safe_load(config))


@pytest.mark.django_db
def test_the_admin_validates_image_prices():
    provider = Provider.objects.create(name="p", api_base="https://api.openai.com/v1")
    model = ProviderModel(provider=provider, alias="img", upstream_model="dall-e-3", image_prices={"1024x1024": "cheap"})
    with pytest.raises(ValidationError):
        model.full_clean()
    model.image_prices = {"1024x1024": {"standard": 0.04, "hd": 0.08}}
    model.full_clean()
