"""Reads of the provider configuration: the catalogue of deployable models.

The catalogue (enabled models of enabled providers, with their decrypted keys) is built here and
cached by routing (`routing.selectors.routing_table_get`) together with the routing rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from decimal import Decimal

from cryptography.fernet import InvalidToken

from kernel.errors import InvalidRequest, ModelNotFound
from providers.adapters import Target
from providers.models import Provider, ProviderKey, ProviderModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitPrices:
    """USD per unit a provider bills besides tokens; None where the model is not billed so.
    `images` is {size: {quality: price}} (or {size: price}), before `per_image`."""

    per_image: Decimal | None = None
    images: dict = field(default_factory=dict, hash=False, compare=True)
    per_audio_minute: Decimal | None = None
    per_million_characters: Decimal | None = None
    per_thousand_searches: Decimal | None = None

    @classmethod
    def of(cls, row) -> UnitPrices:
        """The unit prices of a ProviderModel or a ModelPrice row."""
        return cls(
            per_image=row.price_per_image,
            images=dict(row.image_prices or {}),
            per_audio_minute=row.price_per_audio_minute,
            per_million_characters=row.price_per_million_characters,
            per_thousand_searches=row.price_per_thousand_searches,
        )


NO_UNIT_PRICES = UnitPrices()


@dataclass(frozen=True)
class Price:
    """USD per million tokens; cached input defaults to the input price; `units`: per unit."""

    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None
    effective_from: float = 0.0
    units: UnitPrices = NO_UNIT_PRICES


# The modes of the models that serve a request of each mode: legacy text completions are served by
# completion models (passed through) and by chat models (translated, `providers.adapters.base`).
SERVING_MODES = {"completion": ("completion", "chat")}


def mode_serves(model_mode: str, request_mode: str) -> bool:
    """Whether a model of `model_mode` serves a request of `request_mode`."""
    return model_mode in SERVING_MODES.get(request_mode, (request_mode,))


@dataclass(frozen=True)
class Deployment:
    """A provider model ready to call: its prices, limits and where to send it.

    `key` names the (provider model, provider key) pair: circuit breakers and health are kept
    per key, so every route that sends to the same place shares one breaker.
    """

    model_id: int
    alias: str
    mode: str
    price: Price
    context_window: int | None
    max_output_tokens: int | None
    created: int
    target: Target
    key: str = ""
    priority: int = 0
    weight: int = 1
    scheduled_prices: tuple[Price, ...] = ()
    capabilities: frozenset[str] = frozenset()

    def price_at(self, when: float) -> Price:
        """The price in force at `when` (epoch seconds): the latest effective one, else the base."""
        for price in self.scheduled_prices:  # newest first
            if price.effective_from <= when:
                return price
        return self.price


# Where a model of each mode is called (the error for a model called on another mode's endpoint).
MODE_ENDPOINTS = {
    "chat": "/v1/chat/completions",
    "embedding": "/v1/embeddings",
    "completion": "/v1/completions",
    "image": "/v1/images/generations",
    "transcription": "/v1/audio/transcriptions",
    "speech": "/v1/audio/speech",
    "moderation": "/v1/moderations",
    "rerank": "/v2/rerank",
}


class Catalog:
    def __init__(
        self, deployments: list[Deployment], *, secrets: dict[int, tuple[int, str]] | None = None
    ) -> None:
        self.deployments = deployments
        self.by_model_id = {d.model_id: d for d in deployments}
        self.provider_names = {d.target.provider_name for d in deployments}
        self.secrets = secrets or {}  # provider key id -> (provider id, secret)

    def with_key(self, deployment: Deployment, *, key_id: int | None) -> Deployment | None:
        """The deployment sending with a specific provider key (None: the provider's default)."""
        if key_id is None:
            return deployment
        provider_id, secret = self.secrets.get(key_id, (None, ""))
        if provider_id != deployment.target.provider_id:
            return None  # disabled, deleted, or another provider's key
        return replace(
            deployment,
            key=f"{deployment.model_id}:{key_id}",
            target=replace(deployment.target, api_key=secret),
        )

    def resolve(self, name: str, *, mode: str) -> list[Deployment]:
        """The deployments serving `name` (an alias, or `provider:model`), best first."""
        candidates = self._candidates(name)
        if not candidates:
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
            )
        fitting = [d for d in candidates if mode_serves(d.mode, mode)]
        if not fitting:
            raise InvalidRequest(
                f"The model '{name}' is a {candidates[0].mode} model; use {MODE_ENDPOINTS[candidates[0].mode]}.",
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


def catalog_build() -> Catalog:
    secrets: dict[int, tuple[int, str]] = {}
    defaults: dict[int, tuple[int, str]] = {}
    for key in ProviderKey.objects.filter(enabled=True, provider__enabled=True).order_by(
        "provider_id", "name", "pk"
    ):
        try:
            secrets[key.pk] = (key.provider_id, key.get_secret())
        except InvalidToken:
            # Encrypted under a GATEWAY_ENCRYPTION_KEY this process lacks (a replica not yet given
            # the new key during a rotation): skip that key, so its provider's calls fail with a
            # clear upstream error instead of every request of the gateway failing with a 500.
            logger.error("Provider key %s (id %s) cannot be decrypted with the configured "
                         "GATEWAY_ENCRYPTION_KEY; it is skipped.", key.name, key.pk)
            continue
        defaults.setdefault(key.provider_id, (key.pk, secrets[key.pk][1]))
    models = ProviderModel.objects.filter(enabled=True, provider__enabled=True).select_related(
        "provider"
    ).prefetch_related("prices").order_by("alias", "provider__priority", "provider__name", "pk")
    deployments = [_deployment(model, *defaults.get(model.provider_id, (0, ""))) for model in models]
    return Catalog(deployments, secrets=secrets)


def _deployment(model: ProviderModel, key_id: int, api_key: str) -> Deployment:
    provider: Provider = model.provider
    return Deployment(
        model_id=model.pk,
        alias=model.alias,
        mode=model.mode,
        price=Price(
            input_per_million=model.input_price_per_million,
            output_per_million=model.output_price_per_million,
            cached_input_per_million=model.cached_input_price_per_million,
            units=UnitPrices.of(model),
        ),
        scheduled_prices=tuple(
            Price(
                input_per_million=row.input_price_per_million,
                output_per_million=row.output_price_per_million,
                cached_input_per_million=row.cached_input_price_per_million,
                effective_from=row.effective_from.timestamp(),
                units=UnitPrices.of(row),
            )
            for row in sorted(model.prices.all(), key=lambda row: row.effective_from, reverse=True)
        ),
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        created=int(model.created_at.timestamp()),
        target=Target(
            provider_id=provider.pk,
            provider_name=provider.name,
            wire_type=provider.type,
            api_base=provider.api_base,
            upstream_model=model.upstream_model,
            mode=model.mode,
            api_key=api_key,
            read_timeout=provider.timeout_seconds,
            max_output_tokens=model.max_output_tokens,
            unsupported_params=frozenset(provider.unsupported_params or ()),
            unsupported_policy=provider.unsupported_param_policy,
        ),
        key=f"{model.pk}:{key_id}",
        priority=provider.priority,
        capabilities=frozenset(str(c) for c in model.capabilities or ()),
    )
