"""Kernel against kernel: the ledger figures of two sets of stored boots, with a verdict
and its reasons.

A selector is a kernel release or a shell glob (``6.12.*``), narrowed by ``where``
(firmware_version, firmware_vendor, product), by when the boots were captured (``since``
inclusive, ``until`` exclusive) and by host (``hosts``: globs of host names or machine ids).

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

**Thresholds.** A change within the threshold is ``same``: the larger of an absolute one
(default 1 MiB) and a relative one (default 2 % of the baseline median). Figures where
any increase matters (leaked bytes, memory freed below 1 MiB, anomalies) use 0, and
their change is the largest one: on a host, when paired (one leaking host of three is
a regression), else between the sides' highest values. Whether a change is a regression
or an improvement depends on the figure's direction; figures the kernel does not decide
alone (the firmware's total, memory below 1 MiB as the firmware laid it out) are only
``changed``.

**Anomalies.** A kernel anomaly code (a leak, memory freed below 1 MiB, …) found on the
candidate's measuring boots and on none of the baseline's is a regression; new codes
about the capture (a truncated log, efi=debug) are reported, never a regression.

**Small samples** (fewer than :data:`SMALL_N` boots a side, or paired hosts) are said
plainly in the reasons.

**The paired hosts come worst first**: by how many figures regressed on the host, then by
how far its worst figure moved the wrong way, so that a report showing the first few
shows the ones to look at.
"""

from __future__ import annotations

import fnmatch
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from memledger.ledger.measures import CAPTURE_CODES, REASONS, measures, reasons
from memledger.ledger.stats import summary
from memledger.ledger.vendors import vendor_name
from memledger.store.db import as_utc, iso_utc
from memledger.store.schema import boots, captures, hosts, ledgers
from sqlalchemy import Engine, Row, select

__all__ = ("FIGURES", "SMALL_N", "WHERE_KEYS", "Comparison", "Figure", "Thresholds", "compare",
           "select_boots", "size_text")

Better = Literal["higher", "lower", "neutral"]
WHERE_KEYS = ("firmware_version", "firmware_vendor", "product")
SMALL_N = 5


@dataclass(slots=True)
class _Side:
    """One side's boots as rows and as columns (name → values in row order), and why each
    boot may not measure some figures (ledger/measures.py)."""

    rows: list[Row[Any]]
    cols: dict[str, tuple[Any, ...]]
    whys: list[tuple[str, ...]]
    by_host: dict[int, list[int]] = field(init=False)  # host (its row) → its boots' rows
    kinds: set[tuple[str, ...]] = field(init=False)  # the distinct whys: a handful

    def __post_init__(self) -> None:
        self.kinds = set(self.whys)
        self.by_host = {}
        for i, host in enumerate(self.cols["host_pk"]):
            if (at := self.by_host.get(host)) is None:
                self.by_host[host] = [i]
            else:
                at.append(i)

    def counts(self, figure: str, include_all: bool) -> dict[tuple[str, ...], bool]:
        """Whether each distinct ``why`` of this side counts for ``figure``."""
        return {w: include_all or measures(figure, w) for w in self.kinds}


Sides = dict[str, _Side]
# What else may differ between the sides, besides the kernel.
CONTEXT = ("firmware_vendor", "firmware_version", "product", "cmdline", "memory")


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
        rule = f"the larger of {_size(absolute, fig.unit)} and {self.relative:.0%} of the baseline median"
        return max(absolute, rel), rule


def _size(value: float, unit: str) -> str:
    return size_text(value, unit, places=None)


@dataclass(slots=True)
class Comparison:
    baseline: dict[str, Any]
    candidate: dict[str, Any]
    figures: list[dict[str, Any]]
    verdict: str  # "regression", "improvement", "no change" or "unknown"
    reasons: list[str]
    left_out: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    anomalies: dict[str, Any]
    differences: dict[str, dict[str, dict[str, int]]]
    include_all: bool = False
    # Each side's boots, for the report's per-boot views.
    sides: Sides = field(repr=False, default_factory=dict)

    def rows(self, side: str) -> list[Row[Any]]:
        return self.sides[side].rows

    def counted(self, side: str, figure: str) -> list[tuple[Row[Any], bool]]:
        """Each boot of ``side``, and whether it counted for ``figure``."""
        s = self.sides[side]
        ok = s.counts(figure, self.include_all)
        return [(r, ok[why]) for r, why in zip(s.rows, s.whys, strict=True)]

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


# What compare reads of each boot, and the table each column is in.
# A host is its row (hosts.id), never its machine id alone: clones of one disk image share
# that (migration 0007), and pairing them would compare two machines.
# uptime_s (the capture's; None once it is pruned) dates the boot: captured_at - uptime_s.
_COLUMNS = ("kernel_release", "host_pk", "machine_id", "hostname", "boot_id", "captured_at",
            "uptime_s", "efi", "efi_debug", "kexec", "log_complete", "firmware_vendor",
            "firmware_version", "product", "cmdline", "memory_bytes", "anomaly_codes",
            *(f.key for f in FIGURES))
_TABLE = {name: hosts if name in ("machine_id", "hostname") else
          captures if name == "uptime_s" else
          ledgers if name in ledgers.c else boots for name in _COLUMNS}


def _host_pks(conn: Any, globs: tuple[str, ...]) -> list[int]:
    """The hosts whose name or machine id matches one of ``globs``."""
    return [pk for pk, name, mid in conn.execute(select(hosts.c.id, hosts.c.hostname,
                                                        hosts.c.machine_id))
            if any(fnmatch.fnmatchcase(name or "", g) or fnmatch.fnmatchcase(mid, g)
                   for g in globs)]


def select_boots(engine: Engine, selector: str, where: dict[str, str],
                 since: datetime | None = None, until: datetime | None = None,
                 host_globs: tuple[str, ...] = ()) -> tuple[list[str], list[Row[Any]]]:
    """The releases a selector matches, and their boots (release, host, boot id, what
    decides which figures they measure, their context, and :data:`FIGURES` by column
    key), in no particular order (sorting 100 000 rows would cost PostgreSQL more than
    the rest of the query): only those captured in [``since``, ``until``) and of the hosts
    ``host_globs`` match, when given."""
    with engine.connect() as conn:
        releases = sorted({r for (r,) in conn.execute(select(boots.c.kernel_release).distinct())
                           if r is not None and fnmatch.fnmatchcase(r, selector)})
        if not releases:
            return [], []
        q = (select(*(hosts.c.id.label(name) if name == "host_pk" else _TABLE[name].c[name]
                      for name in _COLUMNS))
             .join(ledgers, ledgers.c.boot_pk == boots.c.id)
             .join(hosts, hosts.c.id == boots.c.host_id)
             .outerjoin(captures, captures.c.id == boots.c.capture_id)
             .where(boots.c.kernel_release.in_(releases)))
        for key, value in where.items():
            q = q.where(boots.c[key] == (vendor_name(value) if key == "firmware_vendor" else value))
        if since is not None:
            q = q.where(boots.c.captured_at >= as_utc(since))
        if until is not None:
            q = q.where(boots.c.captured_at < as_utc(until))
        if host_globs:
            q = q.where(boots.c.host_id.in_(_host_pks(conn, host_globs)))
        rows: list[Row[Any]] = list(conn.execute(q))
    return releases, rows


def _counted(fig: Figure, side: _Side, include_all: bool) -> tuple[list[float], int]:
    """The values of the boots that count for ``fig``, and how many boots with a known
    value were left out."""
    ok = side.counts(fig.name, include_all)
    known = [(v, w) for v, w in zip(side.cols[fig.key], side.whys, strict=True) if v is not None]
    values = [v for v, w in known if ok[w]]
    return values, len(known) - len(values)


def _by_host(fig: Figure, side: _Side, include_all: bool, hosts: list[int]) -> dict[int, float]:
    """Each host's median of the values that count for ``fig`` (hosts with none left out)."""
    ok = side.counts(fig.name, include_all)
    col, whys = side.cols[fig.key], side.whys
    out: dict[int, float] = {}
    for mid in hosts:
        vs = [col[i] for i in side.by_host[mid] if col[i] is not None and ok[whys[i]]]
        if vs:
            out[mid] = vs[0] if len(vs) == 1 else statistics.median(vs)
    return out


def _direction(fig: Figure, delta: float, threshold: float) -> str:
    if abs(delta) <= threshold:
        return "same"
    if fig.better == "neutral":
        return "changed"
    worse = delta < 0 if fig.better == "higher" else delta > 0
    return "regression" if worse else "improvement"


def _figure(fig: Figure, sides: Sides, thresholds: Thresholds, include_all: bool,
            hosts: list[int],
            per_host: dict[str, tuple[dict[int, float], dict[int, float]]]) -> dict[str, Any]:
    """The figure's comparison, host by host over ``hosts`` (the hosts to pair, or none);
    ``per_host`` gets those hosts' medians on each side."""
    counted = {s: _counted(fig, side, include_all) for s, side in sides.items()}
    stats = {s: summary(vals) for s, (vals, _) in counted.items()}
    b, c = stats["baseline"]["median"], stats["candidate"]["median"]
    threshold, rule = thresholds.for_figure(fig, b)
    host_b, host_c = (_by_host(fig, sides[s], include_all, hosts) for s in ("baseline", "candidate"))
    per_host[fig.name] = (host_b, host_c)
    paired = sorted(host_b.keys() & host_c.keys())
    out: dict[str, Any] = {
        "name": fig.name, "label": fig.label, "unit": fig.unit, "better": fig.better,
        "strict": fig.strict, "baseline": stats["baseline"], "candidate": stats["candidate"],
        "left_out": {s: left for s, (_, left) in counted.items()},
        "threshold": threshold, "threshold_rule": rule,
        "mode": None, "hosts": None, "statistic": None, "delta": None, "delta_pct": None,
        "verdict": "unknown", "small_n": None,
    }
    if paired:
        changes = [host_c[h] - host_b[h] for h in paired]
        each = Counter(_direction(fig, d, threshold) for d in changes)
        worse, better = each["regression"], each["improvement"]
        if fig.strict:  # any host's increase matters: the largest change is the one told
            up = fig.better == "lower"
            delta = (max(changes) if up else min(changes)) if worse else \
                (min(changes) if up else max(changes)) if better else statistics.median(changes)
            verdict = "regression" if worse else "improvement" if better else "same"
            statistic = "largest change on a host"
        else:
            delta = statistics.median(changes)
            verdict = _direction(fig, delta, threshold)
            statistic = "median change per host"
        out.update(mode="paired", delta=delta, verdict=verdict, statistic=statistic,
                   hosts={"paired": len(paired), "worse": worse, "better": better,
                          "changed": each["changed"], "same": each["same"]})
        n: int = len(paired)
    elif b is not None and c is not None:
        if fig.strict:  # the candidate's highest value against the baseline's
            delta = stats["candidate"]["max"] - stats["baseline"]["max"]  # type: ignore[operator]
            statistic = "change of the highest value"
        else:
            delta = c - b
            statistic = "change of the median"
        out.update(mode="populations", delta=delta, verdict=_direction(fig, delta, threshold),
                   statistic=statistic)
        n = min(int(stats["baseline"]["n"] or 0), int(stats["candidate"]["n"] or 0))
    else:
        return out
    out["delta_pct"] = 100 * out["delta"] / b if b else None
    out["small_n"] = n < SMALL_N
    return out


def _anomalies(sides: Sides, include_all: bool) -> dict[str, Any]:
    """Each side's anomaly codes on its measuring boots (boots with each), and the codes
    new on the candidate or gone from it."""
    seen: dict[str, Counter[str]] = {}
    for name, side in sides.items():
        ok = side.counts("anomalies", include_all)
        seen[name] = Counter(code for codes, why in zip(side.cols["anomaly_codes"], side.whys, strict=True)
                             if codes and ok[why] for code in codes.split())
    new = sorted(seen["candidate"].keys() - seen["baseline"].keys())
    gone = sorted(seen["baseline"].keys() - seen["candidate"].keys())
    return {"baseline": dict(sorted(seen["baseline"].items())),
            "candidate": dict(sorted(seen["candidate"].items())),
            "new_kernel": [c for c in new if c not in CAPTURE_CODES],
            "new_capture": [c for c in new if c in CAPTURE_CODES],
            "gone": gone}


def _memory(memory_bytes: int | None) -> str | None:
    """RAM the kernel saw, to the nearest quarter GiB (a kernel's own reservations move
    the exact figure by a few MiB)."""
    if memory_bytes is None:
        return None
    return f"{round(memory_bytes / (1 << 28)) / 4:g} GiB"


def _differences(sides: Sides) -> dict[str, dict[str, dict[str, int]]]:
    """For each context attribute whose values differ between the sides: each side's
    values with their boot counts (unknown as "unknown")."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for attr in CONTEXT:
        got = {}
        for name, side in sides.items():
            raw = Counter(side.cols["memory_bytes" if attr == "memory" else attr])
            values: Counter[str] = Counter()
            for value, n in raw.items():  # distinct values only: a handful
                value = _memory(value) if attr == "memory" else value
                values["unknown" if value is None else str(value)] += n
            got[name] = dict(sorted(values.items()))
        if got["baseline"].keys() != got["candidate"].keys():
            out[attr] = got
    return out


def _pairs(sides: Sides, figures: list[dict[str, Any]], hosts: list[int],
           per_host: dict[str, tuple[dict[int, float], dict[int, float]]]) -> list[dict[str, Any]]:
    """Each paired host: its counted values per figure (its median on each side), before
    and after."""
    out = []
    for mid in hosts:
        first = sides["baseline"].by_host[mid][0]
        entry: dict[str, Any] = {
            "machine_id": sides["baseline"].cols["machine_id"][first],
            "hostname": sides["baseline"].cols["hostname"][first],
            "boots": {s: len(sides[s].by_host[mid]) for s in ("baseline", "candidate")},
            "figures": {}}
        for fig, summary_ in zip(FIGURES, figures, strict=True):
            host_b, host_c = per_host[fig.name]
            before, after = host_b.get(mid), host_c.get(mid)
            if before is None and after is None:
                continue
            change = after - before if before is not None and after is not None else None
            entry["figures"][fig.name] = {
                "baseline": before, "candidate": after, "delta": change,
                "verdict": "unknown" if change is None
                else _direction(fig, change, summary_["threshold"])}
        out.append(entry)
    return out


def _worsening(fig: Figure, change: float | None) -> float:
    """How far a host's change went the wrong way for ``fig`` (0 when it did not)."""
    if change is None or fig.better == "neutral":
        return 0.0
    return max(0.0, change if fig.better == "lower" else -change)


def _worst_first(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paired hosts, those with the most regressed figures first, then the one whose
    worst byte figure moved furthest the wrong way."""
    def badness(d: dict[str, Any]) -> tuple[int, float, str]:
        figs = d["figures"]
        regressed = sum(1 for v in figs.values() if v["verdict"] == "regression")
        worst = max((_worsening(f, figs[f.name]["delta"]) for f in FIGURES
                     if f.unit == "bytes" and f.name in figs), default=0.0)
        return -regressed, -worst, str(d["hostname"] or d["machine_id"])
    return sorted(pairs, key=badness)



def _left_out(sides: Sides) -> list[dict[str, Any]]:
    out = []
    for name, side in sides.items():
        left_of = {why: [f.name for f in FIGURES if not measures(f.name, why)] for why in side.kinds}
        for r, why in zip(side.rows, side.whys, strict=True):
            if not why:
                continue
            out.append({"side": name, "machine_id": r.machine_id, "hostname": r.hostname,
                        "boot_id": r.boot_id, "kernel_release": r.kernel_release,
                        "reasons": list(why), "why": [REASONS[w] for w in why],
                        "figures": left_of[why]})
    out.sort(key=lambda d: (d["side"] != "baseline", d["kernel_release"], d["machine_id"], d["boot_id"]))
    return out


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


def _reasons(figures: list[dict[str, Any]], anomalies: dict[str, Any],
             left_out: list[dict[str, Any]], include_all: bool, both: int, every: int,
             pairing: bool) -> list[str]:
    """The verdict's reasons: regressions first, then anomalies, improvements, changes,
    what could not be compared, small samples and the boots left out."""
    def how(f: dict[str, Any]) -> str:
        thr = f"threshold {_size(f['threshold'], f['unit'])} ({f['threshold_rule']})"
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
    if left_out:
        kinds = Counter(w for d in left_out for w in d["reasons"])
        listed = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        out.append(f"{len(left_out)} boots counted for only some figures ({listed})"
                   + (": --include-all counted them anyway" if include_all
                      else "; --include-all counts them"))
    return out


def compare(engine: Engine, baseline: str, candidate: str, where: dict[str, str] | None = None,
            thresholds: Thresholds | None = None, include_all: bool = False, *,
            since: datetime | None = None, until: datetime | None = None,
            host_globs: tuple[str, ...] = ()) -> Comparison:
    where = where or {}
    thresholds = thresholds or Thresholds()
    selected = {side: select_boots(engine, sel, where, since, until, host_globs)
                for side, sel in (("baseline", baseline), ("candidate", candidate))}
    # Why each boot may not measure a figure: one small tuple per distinct state.
    memo: dict[tuple[Any, ...], tuple[str, ...]] = {}
    sides: Sides = {}
    for name, (_, rows) in selected.items():
        # Rows to columns: 100 000 rows transposed in C, not a dict per row.
        cols = dict(zip(_COLUMNS, zip(*rows, strict=True), strict=True)) if rows \
            else dict.fromkeys(_COLUMNS, ())
        whys = []
        for state in zip(cols["efi"], cols["efi_debug"], cols["kexec"], cols["log_complete"],
                         strict=True):
            if state not in memo:
                memo[state] = reasons(*state)
            whys.append(memo[state])
        sides[name] = _Side(rows, cols, whys)
    # Hosts that booted both sides are compared with themselves when they are at least
    # half of all the hosts; else the two populations are compared.
    both = sides["baseline"].by_host.keys() & sides["candidate"].by_host.keys()
    every = sides["baseline"].by_host.keys() | sides["candidate"].by_host.keys()
    pairing = sorted(both) if both and 2 * len(both) >= len(every) else []
    per_host: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
    figures = [_figure(fig, sides, thresholds, include_all, pairing, per_host) for fig in FIGURES]
    anomalies = _anomalies(sides, include_all)
    left_out = _left_out(sides)
    verdicts = {f["verdict"] for f in figures}
    if "regression" in verdicts or anomalies["new_kernel"]:
        verdict = "regression"
    elif "improvement" in verdicts:
        verdict = "improvement"
    elif verdicts == {"unknown"}:
        verdict = "unknown"
    else:
        verdict = "no change"
    window = {"since": iso_utc(since), "until": iso_utc(until), "host_globs": list(host_globs)}
    meta = {side: {"selector": sel, "where": where, **window, "releases": selected[side][0],
                   "boots": len(selected[side][1]),
                   "hosts": len({r.host_pk for r in selected[side][1]})}
            for side, sel in (("baseline", baseline), ("candidate", candidate))}
    return Comparison(meta["baseline"], meta["candidate"], figures, verdict,
                      _reasons(figures, anomalies, left_out, include_all, len(both), len(every),
                               bool(pairing)), left_out,
                      _worst_first(_pairs(sides, figures, pairing, per_host)), anomalies,
                      _differences(sides),
                      include_all, sides)
