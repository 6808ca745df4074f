"""Cost of a request from a model's prices (USD per million tokens)."""

from decimal import Decimal

MILLION = Decimal(1_000_000)


def cost_compute(
    *,
    prompt_tokens: int,
    completion_tokens: int,
    input_price_per_million: Decimal,
    output_price_per_million: Decimal,
) -> Decimal:
    cost = (
        Decimal(prompt_tokens) * input_price_per_million
        + Decimal(completion_tokens) * output_price_per_million
    ) / MILLION
    return cost.quantize(Decimal("0.00000001"))
