"""What ``compare`` counts of each side's boots and of the hosts that booted both sides:
the tallies that store/tally_rows.py (in Python, from fetched rows) and
store/tally_pg.py (in PostgreSQL) both make, and the pieces they build them from, so
that the two give one answer.

**Only measurements count** (ledger/measures.py): each figure is tallied over the boots
that measure it, unless ``include_all``; a boot with a known value left out is counted
as left out.

**Pairs.** A paired host is one that booted both sides. For each figure it has its
median over its counted boots on each side (when it has any); its change is candidate
minus baseline, judged with the figure's threshold. Paired hosts come worst first: by
how many figures regressed on the host, then by how far its worst byte figure moved the
wrong way, then by name (and by the order hosts were first stored, for clones).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from memledger.ledger.measures import REASONS, measures
from memledger.store.figures import FIGURES, Thresholds, direction, exact

__all__ = ("CONTEXT", "SIDES", "FigurePairs", "PairTally", "SideTally", "Tally", "context_text",
           "left_out_entry", "left_out_order", "limits", "pair_entry")

SIDES = ("baseline", "candidate")
# What else may differ between the sides, besides the kernel, and the boots column of each.
CONTEXT = {"firmware_vendor": "firmware_vendor", "firmware_version": "firmware_version",
           "product": "product", "cmdline": "cmdline", "memory": "memory_bytes"}


@dataclass(slots=True)
class SideTally:
    """One side's boots, counted."""

    releases: list[str]
    boots: int
    # Figure name → (n, min, p10, median, p90, max) of the counted values (ledger/stats.py).
    summaries: dict[str, dict[str, Any]]
    left_out: dict[str, int]  # figure name → boots with a known value that did not count
    anomalies: Counter[str]  # anomaly code → the measuring boots that have it
    context: dict[str, Counter[str]]  # CONTEXT name → value as reports write it → boots
    whys: Counter[tuple[str, ...]]  # reasons (never none) → boots left out of some figure


@dataclass(slots=True)
class FigurePairs:
    """One figure over the paired hosts that have it on both sides."""

    n: int
    directions: Counter[str]  # same, changed, regression, improvement → hosts
    median: float | None  # of the hosts' changes
    highest: float | None
    lowest: float | None


@dataclass(slots=True)
class PairTally:
    both: int  # hosts with boots on both sides
    every: int  # hosts with boots on either side
    hosts: dict[str, int]  # side → hosts with boots on it
    figures: dict[str, FigurePairs]
    listed: list[dict[str, Any]]  # paired hosts worst first: all, or the worst ``listed``
    worse: int  # paired hosts with some figure regressed (of all, not only those listed)
    better: int  # ... with some figure improved


class Tally(Protocol):
    def count(self, thresholds: Thresholds, listed: int | None
              ) -> tuple[dict[str, SideTally], PairTally]:
        """Each side (``baseline``, ``candidate``) counted, and the hosts that booted both,
        each figure judged with its threshold (from the baseline's median); the worst
        ``listed`` of them (None: all)."""

    def left_out(self) -> list[dict[str, Any]]:
        """Every boot left out of some figure, in :func:`left_out_order`."""


def limits(thresholds: Thresholds, baseline: SideTally) -> dict[str, float]:
    """Each figure's threshold (figures.Thresholds.for_figure), from the baseline's median."""
    return {f.name: thresholds.for_figure(f, exact(baseline.summaries[f.name]["median"]))[0]
            for f in FIGURES}


def context_text(attr: str, value: Any) -> str:
    """A context value as the reports write it: RAM the kernel saw to the nearest quarter
    GiB (a kernel's own reservations move the exact figure by a few MiB); unknown as
    "unknown"."""
    if value is not None and attr == "memory":
        value = f"{round(value / (1 << 28)) / 4:g} GiB"
    return "unknown" if value is None else str(value)


def pair_entry(machine_id: str, hostname: str | None, boots: dict[str, int],
               before: dict[str, float | None], after: dict[str, float | None],
               thresholds: dict[str, float]) -> dict[str, Any]:
    """A paired host: its median of each figure before and after (figures it has on
    neither side are left out), the change and its verdict."""
    figures = {}
    for fig in FIGURES:
        b, a = exact(before.get(fig.name)), exact(after.get(fig.name))
        if b is None and a is None:
            continue
        change = exact(a - b) if a is not None and b is not None else None
        figures[fig.name] = {"baseline": b, "candidate": a, "delta": change,
                             "verdict": "unknown" if change is None
                             else direction(fig, change, thresholds[fig.name])}
    return {"machine_id": machine_id, "hostname": hostname, "boots": boots, "figures": figures}


def left_out_entry(side: str, machine_id: str, hostname: str | None, boot_id: str,
                   kernel_release: str | None, why: tuple[str, ...]) -> dict[str, Any]:
    return {"side": side, "machine_id": machine_id, "hostname": hostname,
            "boot_id": boot_id, "kernel_release": kernel_release,
            "reasons": list(why), "why": [REASONS[w] for w in why],
            "figures": [f.name for f in FIGURES if not measures(f.name, why)]}


def left_out_order(d: dict[str, Any]) -> tuple[bool, str, str, str]:
    return d["side"] != "baseline", d["kernel_release"] or "", d["machine_id"], d["boot_id"]
