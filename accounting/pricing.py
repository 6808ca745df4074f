"""Cost of a request from the price in force: USD per million tokens, and per unit billed besides."""

from decimal import Decimal

from providers.selectors import Price

MILLION = Decimal(1_000_000)
CENT_FRACTION = Decimal("0.00000001")


def cost_compute(
    *, price: Price, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> Decimal:
    """Prompt tokens served from the provider's cache are billed at the cached-input price."""
    cached = min(max(cached_tokens, 0), prompt_tokens)
    cached_price = (
        price.cached_input_per_million
        if price.cached_input_per_million is not None
        else price.input_per_million
    )
    cost = (
        Decimal(prompt_tokens - cached) * price.input_per_million
        + Decimal(cached) * cached_price
        + Decimal(completion_tokens) * price.output_per_million
    ) / MILLION
    return cost.quantize(CENT_FRACTION)


THOUSAND = Decimal(1000)
SIXTY = Decimal(60)


def units_cost(*, price: Price, units) -> Decimal:
    """The cost of what a provider billed besides tokens (`providers.adapters.Units`): images at
    their size and quality's price (`image_prices`, else `price_per_image`), audio seconds at the
    price per minute, characters per million, searches per thousand. A unit the model has no
    price for costs nothing."""
    if units is None or not units.count:
        return Decimal("0")
    prices = price.units
    if units.kind == "image":
        each = image_price(prices, size=units.size, quality=units.quality)
        cost = units.count * each if each is not None else Decimal("0")
    elif units.kind == "audio_second":
        cost = units.count * prices.per_audio_minute / SIXTY if prices.per_audio_minute is not None else Decimal("0")
    elif units.kind == "character":
        cost = (units.count * prices.per_million_characters / MILLION
                if prices.per_million_characters is not None else Decimal("0"))
    elif units.kind == "search":
        cost = (units.count * prices.per_thousand_searches / THOUSAND
                if prices.per_thousand_searches is not None else Decimal("0"))
    else:
        raise ValueError(f"unknown unit kind {units.kind!r}")
    return cost.quantize(CENT_FRACTION)


def image_price(prices, *, size: str, quality: str) -> Decimal | None:
    """One image's price: `image_prices[size][quality]` (a quality not listed: `standard`'s, else
    `auto`'s, else the size's dearest), or `image_prices[size]` when the size has one price; else
    `price_per_image`."""
    by_size = prices.images.get(size)
    if isinstance(by_size, dict) and by_size:
        # A quality not priced (or not asked): the provider's default, else the dearest.
        known = next((q for q in (quality, "standard", "auto") if q in by_size), None)
        value = by_size[known] if known is not None else max(by_size.values())
    else:
        value = by_size
    if value is not None:
        return Decimal(str(value))
    return prices.per_image
