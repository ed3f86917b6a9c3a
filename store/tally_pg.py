"""The tallies of store/tally.py, counted by PostgreSQL: order statistics with
``percentile_cont`` and ``percentile_disc``, each host's medians with ``GROUP BY``, the
pairs as a join, worst first with ``ORDER BY … LIMIT``. Only the answers cross the wire,
not the boots: 1 000 000 boots stay in the server.

The rules are those of store/tally_rows.py, which does the same in Python on SQLite;
tests/test_compare_sql.py holds the two to one answer on the same stores.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from memledger.ledger.measures import LEFT_OUT_OF, reasons
from memledger.store.figures import FIGURES, Figure, Thresholds
from memledger.store.schema import boots, hosts, ledgers
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
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    Integer,
    Select,
    String,
    and_,
    case,
    column,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    true,
    union_all,
    values,
)
from sqlalchemy.dialects.postgresql import ARRAY

__all__ = ("PgTally",)

# Why a boot may not measure a figure (ledger/measures.py reasons()), as conditions on
# its boots row: NULL (unknown) is no reason.
REASON_SQL: dict[str, ColumnElement[bool]] = {
    "not_efi": boots.c.efi.is_(False),
    "efi_debug": boots.c.efi_debug.is_(True),
    "kexec": boots.c.kexec.is_(True),
    "log_truncated": boots.c.log_complete.is_(False),
}
_STATES = (boots.c.efi, boots.c.efi_debug, boots.c.kexec, boots.c.log_complete)

# p10 and p90 by nearest rank (ledger/stats.py): the value at 1-based rank ceil(n*q/100),
# which percentile_disc(q/100) takes as ceil(q/100 * n) in floating point. The two agree:
# where n*q/100 is a whole number k, the double nearest 0.1 (or 0.9) times n is off by
# less than half a unit in the last place of k and rounds to k exactly.
_NEAREST = [0.1, 0.9]
_BY = ("changed", "improvement", "regression", "same")


def _counts(figure: str, include_all: bool) -> ColumnElement[bool]:
    """Whether a boot counts for ``figure``."""
    if include_all:
        return true()
    return not_(or_(*(REASON_SQL[r] for r in sorted(LEFT_OUT_OF[figure]))))


class PgTally:
    """Both sides tallied in PostgreSQL, all in one snapshot: each side's figures, the
    boots' kinds (reasons, anomaly codes, context) and the pairs."""

    def __init__(self, engine: Engine, selection: Selection, selectors: dict[str, str],
                 include_all: bool) -> None:
        self.conn: Connection = engine.connect()
        self.conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # Planning these statements takes milliseconds; compiling them to machine code
        # (JIT) took 0.1 s, more than it saves over these rows.
        self.conn.exec_driver_sql("SET LOCAL jit = off")
        # The boots' kinds are counted at once on a second connection, in the same
        # snapshot (pg_export_snapshot, as pg_dump --jobs does): they need nothing else.
        snapshot = self.conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        self.other: Connection = engine.connect()
        try:
            self.other.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.other.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            self.other.exec_driver_sql("SET LOCAL jit = off")
        except BaseException:
            self.close()
            raise
        self.include_all = include_all
        self.releases = {s: selection.releases(self.conn, sel) for s, sel in selectors.items()}
        self.filters = selection.filters(self.conn)
        self.where = {s: [boots.c.kernel_release.in_(r), *self.filters] if r else [literal(False)]
                      for s, r in self.releases.items()}

    def close(self) -> None:
        self.conn.close()
        if hasattr(self, "other"):
            self.other.close()

    def _boots(self, side: str, *columns: Any) -> Select[Any]:
        return (select(*columns).select_from(boots.join(ledgers, ledgers.c.boot_pk == boots.c.id))
                .where(*self.where[side]))

    def _both(self, *columns: Any) -> Any:
        """Both sides' boots, each row with its side (0: baseline, 1: candidate): a
        boot of a release both selectors match is on both."""
        return union_all(*(self._boots(name, literal(k).label("side"), *columns)
                           for k, name in enumerate(SIDES))).subquery()

    def count(self, thresholds: Thresholds, listed: int | None
              ) -> tuple[dict[str, SideTally], PairTally]:
        with ThreadPoolExecutor(1) as pool:
            kinds = pool.submit(self._kinds)
            sides = {name: self._side(name) for name in SIDES}
            pairs = self._pairs(limits(thresholds, sides["baseline"]), listed)
            self._add_kinds(sides, kinds.result())
        return sides, pairs

    def _side(self, name: str) -> SideTally:
        """A side's figures: n, min, p10, median, p90, max and the boots left out."""
        cols: list[Any] = [func.count()]
        for fig in FIGURES:
            v, ok = ledgers.c[fig.key], _counts(fig.name, self.include_all)
            cols += [func.count(v).filter(ok), func.min(v).filter(ok), func.max(v).filter(ok),
                     func.percentile_disc(literal(_NEAREST, ARRAY(Float))).within_group(v).filter(ok),
                     func.percentile_cont(0.5).within_group(v).filter(ok),
                     func.count(v).filter(not_(ok))]
        row = self.conn.execute(self._boots(name, *cols)).one()
        summaries, left_out = {}, {}
        for i, fig in enumerate(FIGURES):
            n, lo, hi, p10_90, median, left = row[1 + 6 * i: 7 + 6 * i]
            p10, p90 = p10_90 or (None, None)
            summaries[fig.name] = {"n": n, "min": lo, "p10": p10, "median": median,
                                   "p90": p90, "max": hi}
            left_out[fig.name] = left
        return SideTally(self.releases[name], row[0], summaries, left_out, Counter(),
                         {attr: Counter() for attr in CONTEXT}, Counter())

    def _kinds(self) -> list[Any]:
        """Both sides' boots by kind (reasons, anomaly codes, context): a row per distinct
        mix, added up into each side's tallies."""
        kinds = [*_STATES, ledgers.c.anomaly_codes,
                 *(boots.c[c] if c in boots.c else ledgers.c[c] for c in CONTEXT.values())]
        releases = [(k, r) for k, name in enumerate(SIDES) for r in self.releases[name]]
        if not releases:
            return []
        # One scan of the boots rows for both sides (they are read whole here, for the
        # context): each boot joins the side, or both sides, its release is on.
        on = values(column("side", Integer), column("release", String), name="on").data(releases)
        by = [on.c.side, *kinds]
        q = (select(*by, func.count())
             .select_from(boots.join(ledgers, ledgers.c.boot_pk == boots.c.id)
                          .join(on, on.c.release == boots.c.kernel_release))
             .where(*self.filters).group_by(*by))
        # A fleet has a few kinds, configurations repeated over its hosts; the planner
        # expects a kind per boot and sorts 600 000 rows of command lines to group them
        # (0.5 s of 1.4 s at 1 000 000 boots). Hashing them is what it would choose if it
        # knew; for this statement only.
        self.other.exec_driver_sql("SET LOCAL enable_sort = off")
        try:
            rows = list(self.other.execute(q))
        finally:
            self.other.exec_driver_sql("SET LOCAL enable_sort = on")
        return rows

    def _add_kinds(self, sides: dict[str, SideTally], rows: list[Any]) -> None:
        for k, *state, codes, vendor, version, product, cmdline, memory, n in rows:
            side = sides[SIDES[k]]
            why = reasons(*state)
            if why:
                side.whys[why] += n
            if codes and (self.include_all or not LEFT_OUT_OF["anomalies"].intersection(why)):
                for code in codes.split():
                    side.anomalies[code] += n
            for attr, value in zip(CONTEXT, (vendor, version, product, cmdline, memory),
                                   strict=True):
                side.context[attr][context_text(attr, value)] += n

    def _pairs(self, thresholds: dict[str, float], listed: int | None) -> PairTally:
        figs = list(enumerate(FIGURES))
        # Each boot's values, NULL where the boot does not count for the figure.
        values = {i: case((_counts(f.name, self.include_all), ledgers.c[f.key]), else_=null())
                  for i, f in figs}
        u = self._both(boots.c.host_id.label("host"), *(values[i].label(f"v{i}") for i, _ in figs))
        h = (select(u.c.side, u.c.host, func.count().label("n"),
                    *(func.percentile_cont(0.5).within_group(u.c[f"v{i}"]).label(f"m{i}")
                      for i, _ in figs))
             .group_by(u.c.side, u.c.host).cte("h"))
        hb, hc = h.alias("hb"), h.alias("hc")
        deltas = {i: (hc.c[f"m{i}"] - hb.c[f"m{i}"]) for i, _ in figs}
        verdicts = {i: _verdict(f, deltas[i], literal(thresholds[f.name], Float)) for i, f in figs}
        regressed = sum((case((verdicts[i] == "regression", 1), else_=0) for i, _ in figs),
                        literal(0))
        improved = sum((case((verdicts[i] == "improvement", 1), else_=0) for i, _ in figs),
                       literal(0))
        worst = func.greatest(literal(0.0), *(func.coalesce(_wrong_way(f, deltas[i]), 0.0)
                                              for i, f in figs
                                              if f.unit == "bytes" and f.better != "neutral"))
        p = (select(hb.c.host, hb.c.n.label("nb"), hc.c.n.label("nc"),
                    *(hb.c[f"m{i}"].label(f"b{i}") for i, _ in figs),
                    *(hc.c[f"m{i}"].label(f"c{i}") for i, _ in figs),
                    *(deltas[i].label(f"d{i}") for i, _ in figs),
                    *(verdicts[i].label(f"w{i}") for i, _ in figs),
                    regressed.label("regressed"), improved.label("improved"), worst.label("worst"))
             .join_from(hb, hc, and_(hc.c.host == hb.c.host, hc.c.side == 1))
             .where(hb.c.side == 0).cte("p"))
        per_side = select(func.json_build_array(
            func.count().filter(h.c.side == 0), func.count().filter(h.c.side == 1),
            func.count(h.c.host.distinct()))).scalar_subquery()
        totals = select(func.json_build_array(
            func.count(), per_side,
            func.count().filter(p.c.regressed > 0), func.count().filter(p.c.improved > 0),
            *(func.json_build_array(
                func.count(p.c[f"d{i}"]),
                *(func.count().filter(p.c[f"w{i}"] == by) for by in _BY),
                func.percentile_cont(0.5).within_group(p.c[f"d{i}"]),
                func.max(p.c[f"d{i}"]), func.min(p.c[f"d{i}"])) for i, _ in figs)
        ).label("totals")).select_from(p).subquery("t")
        # Worst first, as tally.py says; names in code point order, as Python compares them.
        # The worst ``listed`` by the two figures, with ties, before their names are read.
        worst_first = select(p).order_by(p.c.regressed.desc(), p.c.worst.desc())
        first = (worst_first.fetch(listed, with_ties=True) if listed is not None
                 else worst_first).subquery("f")
        name = func.coalesce(func.nullif(hosts.c.hostname, ""), hosts.c.machine_id)
        order = (first.c.regressed.desc(), first.c.worst.desc(), name.collate("C"), first.c.host)
        ranked = (select(first, hosts.c.machine_id, hosts.c.hostname, name.label("name"))
                  .join(hosts, hosts.c.id == first.c.host)
                  .order_by(*order).limit(listed).subquery("r"))
        rows = self.conn.execute(
            select(totals.c.totals, ranked).select_from(totals.outerjoin(ranked, true()))
            .order_by(ranked.c.regressed.desc(), ranked.c.worst.desc(),
                      ranked.c.name.collate("C"), ranked.c.host)).all()
        both, (on_b, on_c, every), worse, better, *per = rows[0].totals
        figures = {}
        for fig, (n, *by, median, highest, lowest) in zip(FIGURES, per, strict=True):
            figures[fig.name] = FigurePairs(
                n, Counter({k: c for k, c in zip(_BY, by, strict=True) if c}),
                median, highest, lowest)
        hosts_ = [pair_entry(r.machine_id, r.hostname, {"baseline": r.nb, "candidate": r.nc},
                             {f.name: r._mapping[f"b{i}"] for i, f in figs},
                             {f.name: r._mapping[f"c{i}"] for i, f in figs}, thresholds)
                  for r in rows if r.host is not None]
        return PairTally(both, every, {"baseline": on_b, "candidate": on_c}, figures, hosts_,
                         worse, better)

    def left_out(self) -> list[dict[str, Any]]:
        out = []
        for name in SIDES:
            q = (self._boots(name, hosts.c.machine_id, hosts.c.hostname, boots.c.boot_id,
                             boots.c.kernel_release, *_STATES)
                 .join(hosts, hosts.c.id == boots.c.host_id)
                 .where(or_(*REASON_SQL.values())))
            for mid, hostname, boot_id, release, *state in self.conn.execute(q):
                out.append(left_out_entry(name, mid, hostname, boot_id, release, reasons(*state)))
        return sorted(out, key=left_out_order)


def _verdict(fig: Figure, delta: ColumnElement[Any], threshold: ColumnElement[Any]) -> ColumnElement[Any]:
    """figures.direction() in SQL; NULL where the change is unknown."""
    worse = delta < 0 if fig.better == "higher" else delta > 0
    return case((delta.is_(None), null()),
                (func.abs(delta) <= threshold, "same"),
                *(((true(), "changed"),) if fig.better == "neutral" else
                  ((worse, "regression"), (true(), "improvement"))))


def _wrong_way(fig: Figure, delta: ColumnElement[Any]) -> ColumnElement[Any]:
    """How far a change went the wrong way (figures.worsening()), or less than 0."""
    return delta if fig.better == "lower" else -delta
