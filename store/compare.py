"""Kernel against kernel: the ledger figures of two sets of stored boots, with a verdict
and its reasons.

A selector is a kernel release or a shell glob (``6.12.*``), narrowed by ``where``
(firmware_version, firmware_vendor, product), by when the boots were captured (``since``
inclusive, ``until`` exclusive) and by host (``host_globs``: globs of host names or
machine ids): store/selection.py.

**Only measurements count.** Each figure uses only the boots that can measure it
(ledger/measures.py): an ``efi=debug`` boot counts for the total but not for reclaimed,
kept or leaked; a BIOS boot for no EFI figure; and so on. Every boot left out of a
figure is listed with its reasons; ``include_all`` counts them anyway.

**Pairs.** A host that booted both kernels is its own control: when the hosts that
booted both sides are at least half of all the hosts, each figure is compared host by
host over the paired hosts that have it on both sides (each host's median on each side;
the change is the median of the hosts' changes, and each host is worse, better or the
same). Otherwise, or for a figure no paired host has on both sides, the two populations
are compared (the change is candidate median minus baseline median).

**Thresholds** (store/figures.py). Figures where any increase matters (leaked bytes,
memory freed below 1 MiB, anomalies) use 0, and their change is the largest one: on a
host, when paired (one leaking host of three is a regression), else between the sides'
highest values.

**Anomalies.** A kernel anomaly code (a leak, memory freed below 1 MiB, …) found on the
candidate's measuring boots and on none of the baseline's is a regression; new codes
about the capture (a truncated log, efi=debug) are reported, never a regression.

**Small samples** (fewer than :data:`SMALL_N` boots a side, or paired hosts) are said
plainly in the reasons.

**At fleet size** the counting is done where the boots are (store/tally.py): in
PostgreSQL (store/tally_pg.py), or in Python from the fetched boots (store/tally_rows.py)
on SQLite and for the HTML report, which shows every boot. ``listed`` keeps the worst N
paired hosts, and the boots left out only when there are at most N of them; the totals
always count every one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from memledger.ledger.measures import CAPTURE_CODES
from memledger.store.db import iso_utc
from memledger.store.figures import FIGURES, Figure, Thresholds, direction, exact, size_text
from memledger.store.selection import WHERE_KEYS, Selection
from memledger.store.tally import PairTally, SideTally, Tally
from memledger.store.tally_pg import PgTally
from memledger.store.tally_rows import BootSide, RowTally
from sqlalchemy import Engine, Row

__all__ = ("FIGURES", "SMALL_N", "WHERE_KEYS", "Comparison", "Figure", "Thresholds", "compare",
           "size_text")

SMALL_N = 5


@dataclass(slots=True)
class Comparison:
    baseline: dict[str, Any]
    candidate: dict[str, Any]
    figures: list[dict[str, Any]]
    verdict: str  # "regression", "improvement", "no change" or "unknown"
    reasons: list[str]
    # Every boot left out of some figure; with ``listed``, only when there are at most that
    # many (left_out_whys always counts them).
    left_out: list[dict[str, Any]]
    # The paired hosts, worst first: every one, or the worst ``listed`` (paired counts them).
    pairs: list[dict[str, Any]]
    anomalies: dict[str, Any]
    differences: dict[str, dict[str, dict[str, int]]]
    include_all: bool = False
    # Each side's reasons (never none) → the boots left out of some figure for them.
    left_out_whys: dict[str, Counter[tuple[str, ...]]] = field(default_factory=dict)
    # Paired hosts: all, those with some figure regressed, those with some improved.
    paired: dict[str, int] = field(default_factory=lambda: {"hosts": 0, "worse": 0, "better": 0})
    # Each side's boots, for the report's per-boot views (compare(boots=True)).
    sides: dict[str, BootSide] = field(repr=False, default_factory=dict)

    def rows(self, side: str) -> list[Row[Any]]:
        return self.sides[side].rows

    def counted(self, side: str, figure: str) -> list[tuple[Row[Any], bool]]:
        """Each boot of ``side``, and whether it counted for ``figure``."""
        return self.sides[side].counted(figure)

    @property
    def left_out_total(self) -> int:
        return sum(n for whys in self.left_out_whys.values() for n in whys.values())

    @property
    def regressions(self) -> list[str]:
        out = [f["name"] for f in self.figures if f["verdict"] == "regression"]
        return out + [f"anomaly:{code}" for code in self.anomalies["new_kernel"]]

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": self.reasons,
                "baseline": self.baseline, "candidate": self.candidate,
                "include_all": self.include_all, "figures": self.figures,
                "regressions": self.regressions, "anomalies": self.anomalies,
                "pairs": self.pairs, "left_out": self.left_out,
                "differences": self.differences}


def _figure(fig: Figure, sides: dict[str, SideTally], threshold: tuple[float, str],
            pairs: PairTally | None) -> dict[str, Any]:
    """The figure's comparison: host by host over the paired hosts that have it on both
    sides (``pairs``, when pairing), else the two populations."""
    stats = {s: {**side.summaries[fig.name], "median": exact(side.summaries[fig.name]["median"])}
             for s, side in sides.items()}
    b, c = stats["baseline"]["median"], stats["candidate"]["median"]
    out: dict[str, Any] = {
        "name": fig.name, "label": fig.label, "unit": fig.unit, "better": fig.better,
        "strict": fig.strict, "baseline": stats["baseline"], "candidate": stats["candidate"],
        "left_out": {s: side.left_out[fig.name] for s, side in sides.items()},
        "threshold": threshold[0], "threshold_rule": threshold[1],
        "mode": None, "hosts": None, "statistic": None, "delta": None, "delta_pct": None,
        "verdict": "unknown", "small_n": None,
    }
    paired = pairs.figures[fig.name] if pairs is not None else None
    if paired is not None and paired.n:
        each = paired.directions
        worse, better = each["regression"], each["improvement"]
        if fig.strict:  # any host's increase matters: the largest change is the one told
            up = fig.better == "lower"
            delta = (paired.highest if up else paired.lowest) if worse else \
                (paired.lowest if up else paired.highest) if better else paired.median
            verdict = "regression" if worse else "improvement" if better else "same"
            statistic = "largest change on a host"
        else:
            delta = paired.median
            assert delta is not None
            verdict = direction(fig, delta, threshold[0])
            statistic = "median change per host"
        out.update(mode="paired", delta=exact(delta), verdict=verdict, statistic=statistic,
                   hosts={"paired": paired.n, "worse": worse, "better": better,
                          "changed": each["changed"], "same": each["same"]})
        n: int = paired.n
    elif b is not None and c is not None:
        if fig.strict:  # the candidate's highest value against the baseline's
            delta = stats["candidate"]["max"] - stats["baseline"]["max"]
            statistic = "change of the highest value"
        else:
            delta = c - b
            statistic = "change of the median"
        out.update(mode="populations", delta=exact(delta),
                   verdict=direction(fig, delta, threshold[0]), statistic=statistic)
        n = min(int(stats["baseline"]["n"] or 0), int(stats["candidate"]["n"] or 0))
    else:
        return out
    out["delta_pct"] = 100 * out["delta"] / b if b else None
    out["small_n"] = n < SMALL_N
    return out


def _anomalies(sides: dict[str, SideTally]) -> dict[str, Any]:
    """Each side's anomaly codes on its measuring boots (boots with each), and the codes
    new on the candidate or gone from it."""
    seen = {name: side.anomalies for name, side in sides.items()}
    new = sorted(seen["candidate"].keys() - seen["baseline"].keys())
    gone = sorted(seen["baseline"].keys() - seen["candidate"].keys())
    return {"baseline": dict(sorted(seen["baseline"].items())),
            "candidate": dict(sorted(seen["candidate"].items())),
            "new_kernel": [c for c in new if c not in CAPTURE_CODES],
            "new_capture": [c for c in new if c in CAPTURE_CODES],
            "gone": gone}


def _differences(sides: dict[str, SideTally]) -> dict[str, dict[str, dict[str, int]]]:
    """For each context attribute whose values differ between the sides: each side's
    values with their boot counts (unknown as "unknown")."""
    out = {}
    for attr in sides["baseline"].context:
        got = {name: dict(sorted(side.context[attr].items())) for name, side in sides.items()}
        if got["baseline"].keys() != got["candidate"].keys():
            out[attr] = got
    return out


def _reasons(figures: list[dict[str, Any]], anomalies: dict[str, Any],
             whys: dict[str, Counter[tuple[str, ...]]], include_all: bool, both: int,
             every: int, pairing: bool) -> list[str]:
    """The verdict's reasons: regressions first, then anomalies, improvements, changes,
    what could not be compared, small samples and the boots left out."""
    def how(f: dict[str, Any]) -> str:
        thr = f"threshold {size_text(f['threshold'], f['unit'], places=None)} ({f['threshold_rule']})"
        if f["mode"] == "paired":
            h = f["hosts"]
            count = h["worse"] if f["verdict"] == "regression" else h["better"] \
                if f["verdict"] == "improvement" else h["changed"]
            return (f"{size_text(f['delta'], f['unit'], signed=True)} {f['statistic']}, "
                    f"{count} of {h['paired']} paired hosts; {thr}")
        return (f"{size_text(f['delta'], f['unit'], signed=True)} {f['statistic']} "
                f"({f['baseline']['n']} → {f['candidate']['n']} boots); {thr}")

    out = [f"{f['name']} regressed: {how(f)}" for f in figures if f["verdict"] == "regression"]
    for code in anomalies["new_kernel"]:
        n = anomalies["candidate"][code]
        out.append(f"new anomaly on the candidate: {code} "
                   f"(on {n} boot{'s' if n > 1 else ''}, on none of the baseline's)")
    out += [f"{f['name']} improved: {how(f)}" for f in figures if f["verdict"] == "improvement"]
    if anomalies["gone"]:
        out.append(f"anomalies gone on the candidate: {', '.join(anomalies['gone'])}")
    out += [f"{f['name']} changed (the firmware decides it, not only the kernel): {how(f)}"
            for f in figures if f["verdict"] == "changed"]
    if anomalies["new_capture"]:
        out.append("new on the candidate, about the capture rather than the kernel: "
                   + ", ".join(anomalies["new_capture"]))
    if both and not pairing:
        out.append(f"not paired: {both} of {every} hosts booted both sides (fewer than half); "
                   "the two populations are compared")
    unknown = [f["name"] for f in figures if f["verdict"] == "unknown"]
    if unknown:
        out.append(f"not compared (no measuring boot on one side): {', '.join(unknown)}")
    small = [f for f in figures if f.get("small_n")]
    if small:
        out.append(f"small sample (fewer than {SMALL_N} boots or paired hosts) for "
                   f"{', '.join(f['name'] for f in small)}: a change this size may be chance")
    total = sum(n for side in whys.values() for n in side.values())
    if total:
        kinds: Counter[str] = Counter()
        for side in whys.values():
            for why, n in side.items():
                for w in why:
                    kinds[w] += n
        listed = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        out.append(f"{total} boots counted for only some figures ({listed})"
                   + (": --include-all counted them anyway" if include_all
                      else "; --include-all counts them"))
    return out


def compare(engine: Engine, baseline: str, candidate: str, where: dict[str, str] | None = None,
            thresholds: Thresholds | None = None, include_all: bool = False, *,
            since: datetime | None = None, until: datetime | None = None,
            host_globs: tuple[str, ...] = (), listed: int | None = None,
            boots: bool = False) -> Comparison:
    """``listed``: keep the worst N paired hosts and the boots left out only when at most N
    (None: every one); ``boots``: keep each side's boots for per-boot views."""
    where = where or {}
    thresholds = thresholds or Thresholds()
    selection = Selection(where, since, until, host_globs)
    selectors = {"baseline": baseline, "candidate": candidate}
    if engine.dialect.name == "postgresql" and not boots:
        pg = PgTally(engine, selection, selectors, include_all)
        try:
            return _compare(pg, selection, selectors, thresholds, include_all, listed)
        finally:
            pg.close()
    rows = RowTally(engine, selection, selectors, include_all)
    result = _compare(rows, selection, selectors, thresholds, include_all, listed)
    if boots:
        result.sides = rows.sides
    return result


def _compare(tally: Tally, selection: Selection, selectors: dict[str, str],
             thresholds: Thresholds, include_all: bool, listed: int | None) -> Comparison:
    sides, pairs = tally.count(thresholds, listed)
    rules = {f.name: thresholds.for_figure(f, exact(sides["baseline"].summaries[f.name]["median"]))
             for f in FIGURES}
    # Hosts that booted both sides are compared with themselves when they are at least
    # half of all the hosts; else the two populations are compared.
    pairing = bool(pairs.both) and 2 * pairs.both >= pairs.every
    figures = [_figure(fig, sides, rules[fig.name], pairs if pairing else None) for fig in FIGURES]
    anomalies = _anomalies(sides)
    whys = {name: side.whys for name, side in sides.items()}
    total = sum(n for side in whys.values() for n in side.values())
    left_out = tally.left_out() if total and (listed is None or total <= listed) else []
    verdicts = {f["verdict"] for f in figures}
    if "regression" in verdicts or anomalies["new_kernel"]:
        verdict = "regression"
    elif "improvement" in verdicts:
        verdict = "improvement"
    elif verdicts == {"unknown"}:
        verdict = "unknown"
    else:
        verdict = "no change"
    window = {"since": iso_utc(selection.since), "until": iso_utc(selection.until),
              "host_globs": list(selection.host_globs)}
    meta = {name: {"selector": selectors[name], "where": selection.where, **window,
                   "releases": side.releases, "boots": side.boots, "hosts": pairs.hosts[name]}
            for name, side in sides.items()}
    return Comparison(
        meta["baseline"], meta["candidate"], figures, verdict,
        _reasons(figures, anomalies, whys, include_all, pairs.both, pairs.every, pairing),
        left_out, pairs.listed if pairing else [], anomalies, _differences(sides), include_all,
        whys, {"hosts": pairs.both, "worse": pairs.worse, "better": pairs.better}
        if pairing else {"hosts": 0, "worse": 0, "better": 0})
