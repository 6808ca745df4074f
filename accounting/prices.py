"""The price catalogue: public list prices applied to provider models as dated price rows."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml
from django.db import transaction
from django.utils import timezone

from providers.models import ModelPrice, ProviderModel

CATALOGUE = Path(__file__).resolve().parent / "data" / "prices.yaml"
SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


class CatalogueError(ValueError):
    pass


# The unit prices a model may carry besides its token prices (providers.models.ProviderModel's
# fields of the same names): in the catalogue, `import_config` and `export_config`.
UNIT_PRICE_KEYS = (
    "price_per_image", "price_per_audio_minute", "price_per_million_characters", "price_per_thousand_searches",
)
IMAGE_PRICES_KEY = "image_prices"


@dataclass(frozen=True)
class ListPrice:
    input: Decimal
    output: Decimal
    cached_input: Decimal | None
    # {"price_per_image": Decimal, ..., "image_prices": {...}}: the unit prices set (None left out).
    units: dict = field(default_factory=dict, hash=False)


def unit_prices_parse(entry: dict, where: str) -> dict:
    """The unit prices of a catalogue or configuration entry, checked: non-negative numbers, and
    `image_prices` as {size: price} or {size: {quality: price}}."""
    units: dict = {}
    for key in UNIT_PRICE_KEYS:
        if entry.get(key) is not None:
            units[key] = _non_negative(entry[key], f"{where}.{key}")
    images = entry.get(IMAGE_PRICES_KEY)
    if images:
        units[IMAGE_PRICES_KEY] = image_prices_parse(images, f"{where}.{IMAGE_PRICES_KEY}")
    return units


def image_prices_parse(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise CatalogueError(f"{where} must map sizes to a price or to prices by quality.")
    parsed: dict = {}
    for size, price in value.items():
        if isinstance(price, dict):
            parsed[str(size)] = {str(q): float(_non_negative(p, f"{where}.{size}.{q}")) for q, p in price.items()}
        else:
            parsed[str(size)] = float(_non_negative(price, f"{where}.{size}"))
    return parsed


def _non_negative(value: object, where: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise CatalogueError(f"{where} must be a number.") from exc
    if not number.is_finite() or number < 0 or isinstance(value, bool):
        raise CatalogueError(f"{where} must be a number of at least 0.")
    return number


def unit_prices_of(row) -> dict:
    """The unit prices of a ProviderModel or ModelPrice row, as `unit_prices_parse` gives them."""
    units = {key: getattr(row, key) for key in UNIT_PRICE_KEYS if getattr(row, key) is not None}
    if row.image_prices:
        units[IMAGE_PRICES_KEY] = row.image_prices
    return units


def unit_prices_fields(units: dict) -> dict:
    """Model (or ModelPrice) field values of `units`: every unit price, unset ones cleared."""
    return {**{key: units.get(key) for key in UNIT_PRICE_KEYS}, IMAGE_PRICES_KEY: units.get(IMAGE_PRICES_KEY) or {}}


@dataclass(frozen=True)
class PriceChange:
    model: ProviderModel
    catalogue_key: str
    price: ListPrice


def catalogue_load(path: Path = CATALOGUE) -> dict[str, ListPrice]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"Cannot read the price catalogue {path}: {exc}") from exc
    models = (data or {}).get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise CatalogueError(f"{path}: expected a 'models' mapping.")
    return {str(name): _list_price(name, entry) for name, entry in models.items()}


def _list_price(name: str, entry: object) -> ListPrice:
    if not isinstance(entry, dict):
        raise CatalogueError(f"models.{name} must be a mapping of prices.")
    try:
        cached = entry.get("cached_input")
        return ListPrice(
            input=Decimal(str(entry["input"])),
            output=Decimal(str(entry.get("output", 0))),
            cached_input=Decimal(str(cached)) if cached is not None else None,
            units=unit_prices_parse(entry, f"models.{name}"),
        )
    except (KeyError, InvalidOperation) as exc:
        raise CatalogueError(f"models.{name} needs numeric 'input' and 'output' prices.") from exc


def catalogue_modes(path: Path = CATALOGUE) -> dict[str, str]:
    """{model: mode} of the catalogue's models that say their mode (`mode: embedding`)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"Cannot read the price catalogue {path}: {exc}") from exc
    modes = {}
    for name, entry in ((data or {}).get("models") or {}).items():
        mode = entry.get("mode") if isinstance(entry, dict) else None
        if mode is None:
            continue
        if mode not in ProviderModel.Mode.values:
            raise CatalogueError(f"models.{name}.mode must be one of {', '.join(ProviderModel.Mode.values)}.")
        modes[str(name)] = mode
    return modes


@functools.cache
def _shipped_modes() -> dict[str, str]:
    return catalogue_modes()


def mode_infer(upstream_model: str) -> str:
    """The mode of a model saved without one: the shipped catalogue's when it lists the upstream id
    (or the family of a dated snapshot of it), else what its name says (`NAME_MODES`: "embed" is
    an embedding model, "rerank" a rerank model...), else `chat`."""
    modes = _shipped_modes()
    key = catalogue_match(upstream_model, modes)
    if key is not None:
        return modes[key]
    name = upstream_model.lower()
    for words, mode in NAME_MODES:
        if any(word in name for word in words):
            return mode
    return ProviderModel.Mode.CHAT


# What a model's name says of its mode, when the catalogue does not list it (first match wins).
NAME_MODES = (
    (("embed",), ProviderModel.Mode.EMBEDDING),
    (("rerank",), ProviderModel.Mode.RERANK),
    (("moderation",), ProviderModel.Mode.MODERATION),
    (("whisper", "transcribe"), ProviderModel.Mode.TRANSCRIPTION),
    (("tts",), ProviderModel.Mode.SPEECH),
    (("dall-e", "gpt-image", "imagen"), ProviderModel.Mode.IMAGE),
)


def provider_model_mode_fill(sender, instance: ProviderModel, **kwargs) -> None:
    """`pre_save` of ProviderModel (connected in `AccountingConfig.ready`): a model saved without a
    mode (YAML import, the admin, the operator API) gets the inferred one, which is what is stored
    and shown."""
    if not instance.mode:
        instance.mode = mode_infer(instance.upstream_model or instance.alias)


def catalogue_match(upstream_model: str, catalogue: dict[str, ListPrice]) -> str | None:
    """The catalogue key for an upstream id: exact, or the id of a dated snapshot of it.

    `gpt-4o-mini-2024-07-18` and `claude-haiku-4-5-20251001` match their families; a variant
    such as `gpt-4o-audio-preview` does not match `gpt-4o`, since its price differs.
    """
    if upstream_model in catalogue:
        return upstream_model
    snapshot = SNAPSHOT_SUFFIX.search(upstream_model)
    if snapshot and upstream_model[: snapshot.start()] in catalogue:
        return upstream_model[: snapshot.start()]
    return None


def price_changes(*, catalogue: dict[str, ListPrice], when: datetime) -> list[PriceChange]:
    """Provider models whose price in force at `when` differs from the catalogue's."""
    changes = []
    for model in ProviderModel.objects.prefetch_related("prices").select_related("provider"):
        key = catalogue_match(model.upstream_model, catalogue)
        if key is not None and _price_in_force(model, when) != catalogue[key]:
            changes.append(PriceChange(model=model, catalogue_key=key, price=catalogue[key]))
    return changes


def _price_in_force(model: ProviderModel, when: datetime) -> ListPrice:
    dated = [row for row in model.prices.all() if row.effective_from <= when]
    if dated:
        row = max(dated, key=lambda row: row.effective_from)
        return ListPrice(row.input_price_per_million, row.output_price_per_million, row.cached_input_price_per_million,
                         unit_prices_of(row))
    return ListPrice(model.input_price_per_million, model.output_price_per_million, model.cached_input_price_per_million,
                     unit_prices_of(model))


@transaction.atomic
def prices_load(*, catalogue: dict[str, ListPrice], effective_from: datetime | None = None) -> list[PriceChange]:
    """Add a dated price row for every model whose price differs; running it again adds none."""
    when = effective_from or timezone.now()
    changes = price_changes(catalogue=catalogue, when=when)
    ModelPrice.objects.bulk_create(
        ModelPrice(
            provider_model=change.model,
            effective_from=when,
            input_price_per_million=change.price.input,
            output_price_per_million=change.price.output,
            cached_input_price_per_million=change.price.cached_input,
            **unit_prices_fields(change.price.units),
            source="catalogue",
        )
        for change in changes
    )
    return changes
