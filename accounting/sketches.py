"""Mergeable percentile sketches of latencies, stored with each rollup row.

A sketch is DDSketch's logarithmic histogram (Datadog's `ddsketch` package, the reference
implementation of Masson, Rim and Lee, "DDSketch: a fast and fully-mergeable quantile sketch with
relative-error guarantees", VLDB 2019): a value x > 0 falls in the bin with key
ceil(log(x) / log(gamma)), gamma = (1 + a) / (1 - a), and a quantile is read back as its bin's
representative value. Every value the sketch returns for quantile q is within a relative error
`a` = 1 % of the exact value of rank floor(q * (n - 1)) among the n values (DDSketch's "lower
quantile"), however many values and however the bins were merged.

Stored as JSON `{key: count}` (keys as text, "z" for values of 0, which a logarithm cannot bin).
Bins are counts, so sketches merge by adding counts (hours into days, days into any range) and a
value is taken out by subtracting one (a corrected record): the result is the same sketch as one
built from the values themselves, bit for bit. A latency of 1 ms to 10 minutes spans about 670
bins; a bucket's sketch holds only the bins its values fall in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping

RELATIVE_ACCURACY = 0.01
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
ZERO = "z"
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)


def sketch_key(value: float) -> str:
    """The bin of one value (a latency in ms, never negative)."""
    return ZERO if value <= 0 else str(_MAPPING.key(value))


def sketch_add(bins: dict[str, int], other: Mapping[str, int], sign: int = 1) -> None:
    """Add (sign 1) or take out (sign -1) the counts of `other` into `bins`; empty bins go."""
    for key, count in other.items():
        total = bins.get(key, 0) + sign * count
        if total:
            bins[key] = total
        else:
            bins.pop(key, None)


def sketch_merge(sketches: Iterable[Mapping[str, int] | None]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for bins in sketches:
        if bins:
            sketch_add(merged, bins)
    return merged


def sketch_quantiles(bins: Mapping[str, int]) -> dict[str, float | None]:
    """p50, p95 and p99 of a sketch (None for an empty one), read by ddsketch itself."""
    sketch = DDSketch(RELATIVE_ACCURACY)
    for key, count in bins.items():
        if count > 0:
            sketch.add(0.0 if key == ZERO else _MAPPING.value(int(key)), weight=count)
    return {name: sketch.get_quantile_value(q) if sketch.count else None for name, q in QUANTILES.items()}
