"""Order statistics for ledger figures (pure). Unknown (None) values are left out."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ("percentile", "summary")


def percentile(values: list[int] | list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of sorted ``values`` by linear interpolation between
    closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    pos = (len(values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def summary(values: Iterable[int | float | None]) -> dict[str, float | int | None]:
    """Count of known values, with p10, median and p90."""
    known = sorted(v for v in values if v is not None)
    return {"n": len(known), "p10": percentile(known, 10), "median": percentile(known, 50),
            "p90": percentile(known, 90)}
