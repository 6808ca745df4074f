"""The price catalogue: public list prices applied to provider models as dated price rows."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ListPrice:
    input: Decimal
    output: Decimal
    cached_input: Decimal | None


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
    (or the family of a dated snapshot of it), else `embedding` for a name with "embed" in it,
    else `chat`."""
    modes = _shipped_modes()
    key = catalogue_match(upstream_model, modes)
    if key is not None:
        return modes[key]
    if "embed" in upstream_model.lower():
        return ProviderModel.Mode.EMBEDDING
    return ProviderModel.Mode.CHAT


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
        return ListPrice(row.input_price_per_million, row.output_price_per_million, row.cached_input_price_per_million)
    return ListPrice(model.input_price_per_million, model.output_price_per_million, model.cached_input_price_per_million)


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
            source="catalogue",
        )
        for change in changes
    )
    return changes
