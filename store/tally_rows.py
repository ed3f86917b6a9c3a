"""The tallies of store/tally.py, in Python from each side's boots fetched whole: the way
on SQLite, and for the HTML report, which shows every boot."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from memledger.ledger.measures import measures, reasons
from memledger.ledger.stats import summary
from memledger.store.figures import FIGURES, Figure, Thresholds, direction, worsening
from memledger.store.schema import boots, captures, hosts, ledgers
from memledger.store.selection import Selection
from memledger.store.tally import (
    CONTEXT,
    SIDES,
    FigurePairs,
    PairTally,
    SideTally,
    context_text,
    left_out_entry,
    left_out_order,
    limits,
    pair_entry,
)
from sqlalchemy import Engine, Row, select

__all__ = ("COLUMNS", "BootSide", "RowTally")

# What is read of each boot, and the table each column is in.
# A host is its row (hosts.id), never its machine id alone: clones of one disk image share
# that (migration 0007), and pairing them would compare two machines.
# uptime_s (the capture's; None once it is pruned) dates the boot: captured_at - uptime_s.
COLUMNS = ("kernel_release", "host_pk", "machine_id", "hostname", "boot_id", "captured_at",
           "uptime_s", "efi", "efi_debug", "kexec", "log_complete", "firmware_vendor",
           "firmware_version", "product", "cmdline", "memory_bytes", "anomaly_codes",
           *(f.key for f in FIGURES))
_TABLE = {name: hosts if name in ("machine_id", "hostname") else
          captures if name == "uptime_s" else
          ledgers if name in ledgers.c else boots for name in COLUMNS}


@dataclass(slots=True)
class BootSide:
    """One side's boots as rows and as columns (name → values in row order), and why each
    boot may not measure some figures (ledger/measures.py)."""

    releases: list[str]
    rows: list[Row[Any]]
    cols: dict[str, tuple[Any, ...]]
    whys: list[tuple[str, ...]]
    include_all: bool
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

    def counts(self, figure: str) -> dict[tuple[str, ...], bool]:
        """Whether each distinct ``why`` of this side counts for ``figure``."""
        return {w: self.include_all or measures(figure, w) for w in self.kinds}

    def counted(self, figure: str) -> list[tuple[Row[Any], bool]]:
        """Each boot, and whether it counted for ``figure``."""
        ok = self.counts(figure)
        return [(r, ok[why]) for r, why in zip(self.rows, self.whys, strict=True)]


def _select(conn: Any, selection: Selection, selector: str) -> tuple[list[str], list[Row[Any]]]:
    """The releases ``selector`` matches and their boots (:data:`COLUMNS`), in no
    particular order (sorting 100 000 rows would cost PostgreSQL more than the rest of the
    query)."""
    releases = selection.releases(conn, selector)
    if not releases:
        return [], []
    q = (select(*(hosts.c.id.label(name) if name == "host_pk" else _TABLE[name].c[name]
                  for name in COLUMNS))
         .join(ledgers, ledgers.c.boot_pk == boots.c.id)
         .join(hosts, hosts.c.id == boots.c.host_id)
         .outerjoin(captures, captures.c.id == boots.c.capture_id)
         .where(*selection.conditions(conn, releases)))
    return releases, list(conn.execute(q))


class RowTally:
    """Both sides' boots fetched, and tallied in Python."""

    def __init__(self, engine: Engine, selection: Selection, selectors: dict[str, str],
                 include_all: bool) -> None:
        # Why each boot may not measure a figure: one small tuple per distinct state.
        memo: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self.sides: dict[str, BootSide] = {}
        with engine.connect() as conn:
            for name, selector in selectors.items():
                releases, rows = _select(conn, selection, selector)
                # Rows to columns: 100 000 rows transposed in C, not a dict per row.
                cols = dict(zip(COLUMNS, zip(*rows, strict=True), strict=True)) if rows \
                    else dict.fromkeys(COLUMNS, ())
                whys = []
                for state in zip(cols["efi"], cols["efi_debug"], cols["kexec"],
                                 cols["log_complete"], strict=True):
                    if state not in memo:
                        memo[state] = reasons(*state)
                    whys.append(memo[state])
                self.sides[name] = BootSide(releases, rows, cols, whys, include_all)

    def count(self, thresholds: Thresholds, listed: int | None
              ) -> tuple[dict[str, SideTally], PairTally]:
        sides = {name: self.side(name) for name in SIDES}
        return sides, self.pairs(limits(thresholds, sides["baseline"]), listed)

    def side(self, name: str) -> SideTally:
        s = self.sides[name]
        summaries, left_out = {}, {}
        for fig in FIGURES:
            counted, left = _counted(fig, s)
            summaries[fig.name], left_out[fig.name] = summary(counted), left
        ok = s.counts("anomalies")
        anomalies = Counter(code for codes, why in zip(s.cols["anomaly_codes"], s.whys, strict=True)
                            if codes and ok[why] for code in codes.split())
        context = {}
        for attr, column in CONTEXT.items():
            values: Counter[str] = Counter()
            for value, n in Counter(s.cols[column]).items():  # distinct values: a handful
                values[context_text(attr, value)] += n
            context[attr] = values
        return SideTally(s.releases, len(s.rows), summaries, left_out,
                         anomalies, context, Counter(w for w in s.whys if w))

    def pairs(self, thresholds: dict[str, float], listed: int | None) -> PairTally:
        """The hosts that booted both sides, each figure judged with ``thresholds``
        (figure name → threshold); the worst ``listed`` of them (None: all)."""
        b, c = self.sides["baseline"], self.sides["candidate"]
        both = sorted(b.by_host.keys() & c.by_host.keys())
        medians = {name: {fig.name: _by_host(fig, side, both) for fig in FIGURES}
                   for name, side in self.sides.items()}
        figures = {}
        for fig in FIGURES:
            before, after = medians["baseline"][fig.name], medians["candidate"][fig.name]
            changes = [after[h] - before[h] for h in both if h in before and h in after]
            figures[fig.name] = FigurePairs(
                len(changes), Counter(direction(fig, d, thresholds[fig.name]) for d in changes),
                statistics.median(changes) if changes else None,
                max(changes, default=None), min(changes, default=None))
        hosts_ = []
        for h in both:
            first = b.by_host[h][0]
            hosts_.append(pair_entry(
                b.cols["machine_id"][first], b.cols["hostname"][first],
                {"baseline": len(b.by_host[h]), "candidate": len(c.by_host[h])},
                {f: m.get(h) for f, m in medians["baseline"].items()},
                {f: m.get(h) for f, m in medians["candidate"].items()}, thresholds))
        hosts_.sort(key=_badness)
        worse = sum(1 for d in hosts_ if any(v["verdict"] == "regression" for v in d["figures"].values()))
        better = sum(1 for d in hosts_ if any(v["verdict"] == "improvement" for v in d["figures"].values()))
        return PairTally(len(both), len(b.by_host.keys() | c.by_host.keys()),
                         {name: len(side.by_host) for name, side in self.sides.items()}, figures,
                         hosts_ if listed is None else hosts_[:listed], worse, better)

    def left_out(self) -> list[dict[str, Any]]:
        out = [left_out_entry(name, r.machine_id, r.hostname, r.boot_id, r.kernel_release, why)
               for name, side in self.sides.items()
               for r, why in zip(side.rows, side.whys, strict=True) if why]
        return sorted(out, key=left_out_order)


def _counted(fig: Figure, side: BootSide) -> tuple[list[float], int]:
    """The values of the boots that count for ``fig``, and how many boots with a known
    value were left out."""
    ok = side.counts(fig.name)
    known = [(v, w) for v, w in zip(side.cols[fig.key], side.whys, strict=True) if v is not None]
    values = [v for v, w in known if ok[w]]
    return values, len(known) - len(values)


def _by_host(fig: Figure, side: BootSide, hosts_: list[int]) -> dict[int, float]:
    """Each host's median of the values that count for ``fig`` (hosts with none left out)."""
    ok = side.counts(fig.name)
    col, whys = side.cols[fig.key], side.whys
    out: dict[int, float] = {}
    for h in hosts_:
        vs = [col[i] for i in side.by_host[h] if col[i] is not None and ok[whys[i]]]
        if vs:
            out[h] = vs[0] if len(vs) == 1 else statistics.median(vs)
    return out


def _badness(d: dict[str, Any]) -> tuple[int, float, str]:
    """Worst first: most figures regressed, then the byte figure that moved furthest the
    wrong way, then by name (a stable sort keeps clones in the order they were stored)."""
    figs = d["figures"]
    regressed = sum(1 for v in figs.values() if v["verdict"] == "regression")
    worst = max((worsening(f, figs[f.name]["delta"]) for f in FIGURES
                 if f.unit == "bytes" and f.name in figs), default=0.0)
    return -regressed, -worst, str(d["hostname"] or d["machine_id"])
