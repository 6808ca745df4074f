"""Cost of a request from the price in force (USD per million tokens)."""

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
