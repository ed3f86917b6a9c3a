"""The figures ``compare`` reads of every boot, and how a change in one is judged (pure).

A change within a figure's threshold is ``same``: the larger of an absolute threshold
(default 1 MiB) and a relative one (default 2 % of the baseline median). Figures where
any increase matters (leaked bytes, memory freed below 1 MiB, anomalies) use 0. Whether
a change is a regression or an improvement depends on the figure's direction; figures
the kernel does not decide alone (the firmware's total, memory below 1 MiB as the
firmware laid it out) are only ``changed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ("FIGURES", "Better", "Figure", "Thresholds", "direction", "exact", "size_text",
           "worsening")

Better = Literal["higher", "lower", "neutral"]


@dataclass(frozen=True, slots=True)
class Figure:
    key: str  # the ledger column
    name: str  # as users write it in --threshold and read it in reports
    label: str
    better: Better
    unit: str = "bytes"
    strict: bool = False  # any increase is a change (threshold 0)


FIGURES = (
    Figure("bs_total_bytes", "total", "EFI boot services: total", "neutral"),
    Figure("bs_reclaimed_bytes", "reclaimed", "EFI boot services: reclaimed", "higher"),
    Figure("bs_kept_bytes", "kept", "EFI boot services: kept", "lower"),
    Figure("bs_leaked_bytes", "leaked", "EFI boot services: leaked", "lower", strict=True),
    Figure("low_usable_bytes", "low_usable", "below 1 MiB: usable", "neutral"),
    Figure("low_reserved_bytes", "low_reserved", "below 1 MiB: reserved", "neutral"),
    Figure("low_boot_services_bytes", "low_boot_services", "below 1 MiB: boot services", "neutral"),
    Figure("low_freed_bytes", "low_freed", "below 1 MiB: freed", "lower", strict=True),
    Figure("anomaly_count", "anomalies", "anomalies", "lower", "count", strict=True),
)


@dataclass(slots=True)
class Thresholds:
    absolute: float = 1 << 20
    relative: float = 0.02
    per_figure: dict[str, float] = field(default_factory=dict)

    def for_figure(self, fig: Figure, baseline_median: float | None) -> tuple[float, str]:
        """The threshold, and how it was chosen (for the reports)."""
        if fig.name in self.per_figure:
            return self.per_figure[fig.name], "set by --threshold"
        if fig.strict:
            return 0.0, "0: any increase matters"
        absolute = self.absolute if fig.unit == "bytes" else 0.0
        rel = self.relative * abs(baseline_median or 0)
        rule = (f"the larger of {size_text(absolute, fig.unit, places=None)} and "
                f"{self.relative:.0%} of the baseline median")
        return max(absolute, rel), rule


def direction(fig: Figure, delta: float, threshold: float) -> str:
    """same, changed (a neutral figure), regression or improvement."""
    if abs(delta) <= threshold:
        return "same"
    if fig.better == "neutral":
        return "changed"
    worse = delta < 0 if fig.better == "higher" else delta > 0
    return "regression" if worse else "improvement"


def worsening(fig: Figure, change: float | None) -> float:
    """How far a host's change went the wrong way for ``fig`` (0 when it did not)."""
    if change is None or fig.better == "neutral":
        return 0.0
    return max(0.0, change if fig.better == "lower" else -change)


def exact(value: float | None) -> float | None:
    """A median as reports write it: a whole number as an int (the mean of two middle
    values, 3.0, is 3), half a byte as a float. Medians are exact either way: byte
    counts and their halves are exact in a double up to 2**52."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def size_text(value: float, unit: str, *, signed: bool = False, places: int | None = 1,
              mib: bool = True, short: bool = False) -> str:
    """A figure for people: MiB with ``places`` decimals (None: as few as it needs), KiB
    (or bytes) under 1 MiB, where a few KiB would read "-0.0 MiB"; counts as they are.
    ``mib=False`` leaves "MiB" out for a table whose heading says it (a KiB or bytes figure
    keeps its unit), and ``short`` writes those as ``4K`` and ``512B`` for a narrow
    terminal table. Every byte figure memledger shows a person (compare's reasons, every
    report format's tables, ``boots``, ``analyze``, the landing page) is written with it."""
    sign = "+" if signed else ""
    if unit != "bytes":
        return f"{value:{sign}g}"
    if 0 < abs(value) < 1 << 20:
        kib, b = ("K", "B") if short else (" KiB", " bytes")
        return (f"{value / 1024:{sign},.0f}{kib}" if abs(value) >= 1024
                else f"{value:{sign},.0f}{b}")
    text = (f"{value / (1 << 20):{sign}g}" if places is None
            else f"{value / (1 << 20):{sign},.{places}f}")
    return f"{text} MiB" if mib else text
