"""Order statistics for ledger figures (pure). Unknown (None) values are left out.

p10 and p90 are nearest-rank percentiles: each is a value some boot had, never one
interpolated between two boots (with two boots, 0 and 33.7 MiB, an interpolated p90 of
30.3 MiB would describe no boot). The median is the middle value, or the mean of the two
middle values for an even count, as usual.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

__all__ = ("nearest_rank", "summary")


def nearest_rank(values: list[int] | list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of sorted ``values`` by the nearest-rank method: the
    smallest value with at least q % of the values at or below it; None for no values."""
    if not values:
        return None
    return values[max(0, math.ceil(len(values) * q / 100) - 1)]


def summary(values: Iterable[int | float | None]) -> dict[str, float | int | None]:
    """Count of known values, with min, p10, median, p90 and max."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return dict.fromkeys(("n", "min", "p10", "median", "p90", "max"), None) | {"n": 0}
    return {"n": len(known), "min": known[0], "p10": nearest_rank(known, 10),
            "median": statistics.median(known), "p90": nearest_rank(known, 90),
            "max": known[-1]}
