"""Kernel against kernel: the ledger figures of two sets of stored boots, with verdicts.

A selector is a kernel release or a shell glob (``6.12.*``), narrowed by ``where``
(firmware_version, firmware_vendor, product). For every figure each side gets its number
of boots where the figure is known, p10, median and p90; the delta is candidate median
minus baseline median. The verdict compares the delta with a threshold: the larger of an
absolute one (default 1 MiB) and a relative one (default 2 % of the baseline median);
figures where any increase matters (leaked bytes, memory freed below 1 MiB, anomalies)
use 0. Whether a change is a regression or an improvement depends on the figure's
direction; figures the kernel does not decide alone (the firmware's total, usable memory)
are only ``changed``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal

from memledger.store.schema import boots, ledgers
from memledger.store.stats import summary
from sqlalchemy import Engine, select

__all__ = ("FIGURES", "WHERE_KEYS", "Comparison", "Figure", "Thresholds", "compare", "select_boots")

Better = Literal["higher", "lower", "neutral"]
WHERE_KEYS = ("firmware_version", "firmware_vendor", "product")


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

    def for_figure(self, fig: Figure, baseline_median: float | None) -> float:
        if fig.name in self.per_figure:
            return self.per_figure[fig.name]
        if fig.strict:
            return 0.0
        rel = self.relative * abs(baseline_median or 0)
        return max(self.absolute if fig.unit == "bytes" else 0.0, rel)


@dataclass(slots=True)
class Comparison:
    baseline: dict[str, Any]
    candidate: dict[str, Any]
    figures: list[dict[str, Any]]
    # Each side's columns: kernel release, then FIGURES in order (see select_boots).
    columns: dict[str, list[tuple[Any, ...]]] = field(repr=False, default_factory=dict)

    @property
    def samples(self) -> dict[str, dict[str, list[float]]]:
        """Figure name → kernel release → known values (for the report's plots; built on
        demand, as only the HTML report needs them)."""
        out: dict[str, dict[str, list[float]]] = {}
        for k, fig in enumerate(FIGURES, 1):
            out[fig.name] = {}
            for cols in self.columns.values():
                out[fig.name].update(_by_release(cols[0], cols[k]))
        return out

    @property
    def regressions(self) -> list[str]:
        return [f["name"] for f in self.figures if f["verdict"] == "regression"]

    def as_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "candidate": self.candidate,
                "figures": self.figures, "regressions": self.regressions}


def select_boots(engine: Engine, selector: str,
                 where: dict[str, str]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The releases a selector matches, and their boots' ledger columns as tuples
    (release, then :data:`FIGURES` in order), in no particular order (sorting 100 000
    rows would cost PostgreSQL more than the rest of the query)."""
    with engine.connect() as conn:
        releases = sorted({r for (r,) in conn.execute(select(boots.c.kernel_release).distinct())
                           if r is not None and fnmatch.fnmatchcase(r, selector)})
        if not releases:
            return [], []
        q = (select(boots.c.kernel_release, *(ledgers.c[f.key] for f in FIGURES))
             .join(ledgers, ledgers.c.boot_pk == boots.c.id)
             .where(boots.c.kernel_release.in_(releases)))
        for key, value in where.items():
            q = q.where(boots.c[key] == value)
        rows = [tuple(r) for r in conn.execute(q)]
    return releases, rows


def _columns(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows to columns (100 000 rows: a transpose in C, not a dict per row)."""
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(len(FIGURES) + 1)]


def _by_release(releases: tuple[str, ...], column: tuple[Any, ...]) -> dict[str, list[float]]:
    """Known values per release."""
    out: dict[str, list[float]] = {}
    for release, value in zip(releases, column, strict=True):
        if value is not None:
            out.setdefault(release, []).append(value)
    return out


def _verdict(fig: Figure, delta: float | None, threshold: float) -> str:
    if delta is None:
        return "unknown"
    if abs(delta) <= threshold:
        return "same"
    if fig.better == "neutral":
        return "changed"
    worse = delta < 0 if fig.better == "higher" else delta > 0
    return "regression" if worse else "improvement"


def compare(engine: Engine, baseline: str, candidate: str, where: dict[str, str] | None = None,
            thresholds: Thresholds | None = None) -> Comparison:
    where = where or {}
    thresholds = thresholds or Thresholds()
    sides = {"baseline": select_boots(engine, baseline, where),
             "candidate": select_boots(engine, candidate, where)}
    columns = {side: _columns(rows) for side, (_, rows) in sides.items()}
    figures: list[dict[str, Any]] = []
    for k, fig in enumerate(FIGURES, 1):
        stats = {side: summary(cols[k]) for side, cols in columns.items()}
        b, c = stats["baseline"]["median"], stats["candidate"]["median"]
        delta = c - b if b is not None and c is not None else None
        threshold = thresholds.for_figure(fig, b)
        figures.append({
            "name": fig.name, "label": fig.label, "unit": fig.unit, "better": fig.better,
            "baseline": stats["baseline"], "candidate": stats["candidate"],
            "delta": delta,
            "delta_pct": (100 * delta / b) if delta is not None and b else None,
            "threshold": threshold,
            "verdict": _verdict(fig, delta, threshold),
        })
    meta = {side: {"selector": sel, "where": where, "releases": sides[side][0],
                   "boots": len(sides[side][1])}
            for side, sel in (("baseline", baseline), ("candidate", candidate))}
    return Comparison(meta["baseline"], meta["candidate"], figures, columns)
