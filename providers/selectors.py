"""Reads of the provider configuration, cached in process for the hot path.

The catalogue (enabled models of enabled providers, with their decrypted keys) is rebuilt at most
every `GATEWAY_CONFIG_CACHE_SECONDS`, and at once in the process where the admin saves a change
(see `providers.apps`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings

from gateway_site.errors import InvalidRequest, ModelNotFound
from providers.adapters import Target
from providers.models import Provider, ProviderKey, ProviderModel


@dataclass(frozen=True)
class Deployment:
    """A provider model ready to call: its prices, limits and where to send it."""

    model_id: int
    alias: str
    mode: str
    input_price_per_million: Decimal
    output_price_per_million: Decimal
    context_window: int | None
    max_output_tokens: int | None
    created: int
    target: Target


class Catalog:
    def __init__(self, deployments: list[Deployment]) -> None:
        self.deployments = deployments
        self.provider_names = {d.target.provider_name for d in deployments}

    def resolve(self, name: str, *, mode: str) -> list[Deployment]:
        """The deployments serving `name` (an alias, or `provider:model`), best first."""
        candidates = self._candidates(name)
        if not candidates:
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
            )
        fitting = [d for d in candidates if d.mode == mode]
        if not fitting:
            endpoint = "/v1/embeddings" if candidates[0].mode == "embedding" else "/v1/chat/completions"
            raise InvalidRequest(
                f"The model '{name}' is a {candidates[0].mode} model; use {endpoint}.",
                param="model",
                code="model_not_supported",
            )
        return fitting

    def _candidates(self, name: str) -> list[Deployment]:
        provider, sep, model = name.partition(":")
        if sep and provider in self.provider_names:
            return [
                d
                for d in self.deployments
                if d.target.provider_name == provider
                and model in (d.alias, d.target.upstream_model)
            ]
        return [d for d in self.deployments if d.alias == name]

    def models(self) -> list[Deployment]:
        return self.deployments


_state: dict[str, tuple[float, Catalog]] = {}


def catalog_clear() -> None:
    _state.clear()


async def catalog_get() -> Catalog:
    cached = _state.get("catalog")
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    catalog = await sync_to_async(catalog_build)()
    _state["catalog"] = (time.monotonic() + settings.GATEWAY_CONFIG_CACHE_SECONDS, catalog)
    return catalog


def catalog_build() -> Catalog:
    keys: dict[int, str] = {}
    for key in ProviderKey.objects.filter(enabled=True, provider__enabled=True).order_by(
        "provider_id", "name", "pk"
    ):
        keys.setdefault(key.provider_id, key.get_secret())
    models = ProviderModel.objects.filter(enabled=True, provider__enabled=True).select_related(
        "provider"
    ).order_by("alias", "provider__priority", "provider__name", "pk")
    return Catalog([_deployment(model, keys.get(model.provider_id, "")) for model in models])


def _deployment(model: ProviderModel, api_key: str) -> Deployment:
    provider: Provider = model.provider
    return Deployment(
        model_id=model.pk,
        alias=model.alias,
        mode=model.mode,
        input_price_per_million=model.input_price_per_million,
        output_price_per_million=model.output_price_per_million,
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        created=int(model.created_at.timestamp()),
        target=Target(
            provider_id=provider.pk,
            provider_name=provider.name,
            wire_type=provider.type,
            api_base=provider.api_base,
            upstream_model=model.upstream_model,
            api_key=api_key,
            read_timeout=provider.timeout_seconds,
            max_output_tokens=model.max_output_tokens,
        ),
    )
