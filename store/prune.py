"""Retention: remove old boots from the store, with everything that belongs to them.

A boot goes when it was captured before ``now - older_than``, or when its host has at
least ``keep`` boots captured after it (newest by ``boots.captured_at``, ties by
``boots.id``); either rule is enough. A boot with no capture time is never removed and
never counted. With a boot go its ledger, its ledger document and its events (foreign keys
with ``ON DELETE CASCADE``), the capture it points at (its raw bytes, the bulk of the
store) and the runtime batches of its (host, boot id), with their events. With
``older_than``, runtime batches written before the cutoff whose boot was never stored go
too, and so do hosts not seen since the cutoff that hold no boot and no batch.

The boots to remove are chosen in one read; they are then removed 500 to a transaction
(SQLite's write lock taken at ``BEGIN``), so that no writer waits long and no statement
holds more than a chunk of rows. Each removal states its rule again in its own statement,
and on PostgreSQL first locks its boots in the order ingest locks them: a boot that a
concurrent ingest gave a newer capture is judged by that capture, and a capture stored
meanwhile is never taken by a decision made before it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from memledger.store.db import as_utc, writer
from memledger.store.schema import boots, captures, hosts, runtime_batches
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    delete,
    exists,
    false,
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.orm import aliased

__all__ = ("CHUNK", "PruneReport", "prune")

# Boots (or batches, or hosts) removed per transaction.
CHUNK = 500

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune removed (or, with ``dry_run``, would remove)."""

    boots: int
    captures: int
    runtime_batches: int
    hosts: int
    capture_bytes: int  # captures.size of the captures removed: their raw, compressed bytes
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Rules:
    cutoff: datetime | None  # UTC; boots captured before it go
    keep: int | None         # boots kept per host, newest first

    def boot_condition(self) -> ColumnElement[bool]:
        """Whether the boots row in hand goes, in one SQL expression (re-evaluated by each
        DELETE, so that a decision made before a concurrent ingest is checked again)."""
        parts: list[ColumnElement[bool]] = []
        if self.cutoff is not None:
            parts.append(boots.c.captured_at < self.cutoff)
        if self.keep is not None:
            newer = aliased(boots)
            parts.append(select(func.count()).select_from(newer).where(
                newer.c.host_id == boots.c.host_id,
                or_(newer.c.captured_at > boots.c.captured_at,
                    and_(newer.c.captured_at == boots.c.captured_at, newer.c.id > boots.c.id)),
            ).scalar_subquery() >= self.keep)
        return or_(false(), *parts)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def _doomed_boots(conn: Connection, rules: _Rules) -> list[Any]:
    """The boots either rule removes (id, host, boot id, capture size), in key order: one
    pass with a window function rather than a count per boot."""
    rank = func.row_number().over(partition_by=boots.c.host_id,
                                  order_by=(boots.c.captured_at.desc(), boots.c.id.desc()))
    ranked = (select(boots.c.id, boots.c.host_id, boots.c.boot_id, boots.c.captured_at,
                     boots.c.capture_id, rank.label("rank"))
              .where(boots.c.captured_at.is_not(None)).subquery())
    parts: list[ColumnElement[bool]] = []
    if rules.cutoff is not None:
        parts.append(ranked.c.captured_at < rules.cutoff)
    if rules.keep is not None:
        parts.append(ranked.c.rank > rules.keep)
    q = (select(ranked.c.id, ranked.c.host_id, ranked.c.boot_id, captures.c.size)
         .outerjoin(captures, captures.c.id == ranked.c.capture_id)
         .where(or_(false(), *parts))
         .order_by(ranked.c.host_id, ranked.c.boot_id))
    return list(conn.execute(q).all())


def _orphan_batches(rules: _Rules) -> ColumnElement[bool]:
    """Runtime batches written before the cutoff whose boot was never stored."""
    if rules.cutoff is None:
        return false()
    return and_(runtime_batches.c.written_at < rules.cutoff,
                ~exists().where(boots.c.host_id == runtime_batches.c.host_id,
                                boots.c.boot_id == runtime_batches.c.boot_id))


def _empty_host(rules: _Rules) -> ColumnElement[bool]:
    """Hosts not seen since the cutoff that hold no boot and no runtime batch."""
    if rules.cutoff is None:
        return false()  # keep >= 1 leaves every host that has a boot one of them
    return and_(hosts.c.last_seen < rules.cutoff,
                ~exists().where(boots.c.host_id == hosts.c.id),
                ~exists().where(runtime_batches.c.host_id == hosts.c.id))


def _dry_run(engine: Engine, rules: _Rules) -> PruneReport:
    with engine.connect() as conn:
        doomed = _doomed_boots(conn, rules)
        keys = {(r.host_id, r.boot_id) for r in doomed}
        batch_hosts: Counter[int] = Counter()
        for b in conn.execute(select(runtime_batches.c.host_id, runtime_batches.c.boot_id,
                                     _orphan_batches(rules).label("orphan"))):
            if b.orphan or (b.host_id, b.boot_id) in keys:
                batch_hosts[b.host_id] += 1
        n_hosts = 0
        if rules.cutoff is not None:
            boot_hosts = Counter(r.host_id for r in doomed)
            n_boots = select(func.count()).where(boots.c.host_id == hosts.c.id).scalar_subquery()
            n_batches = (select(func.count()).where(runtime_batches.c.host_id == hosts.c.id)
                         .scalar_subquery())
            for h in conn.execute(select(hosts.c.id, n_boots.label("boots"),
                                         n_batches.label("batches"))
                                  .where(hosts.c.last_seen < rules.cutoff)):
                n_hosts += (h.boots == boot_hosts[h.id] and h.batches == batch_hosts[h.id])
        conn.rollback()
    sizes = [r.size for r in doomed if r.size is not None]
    return PruneReport(len(doomed), len(sizes), sum(batch_hosts.values()), n_hosts, sum(sizes),
                       True)


def _remove_boots(engine: Engine, ids: Sequence[int], rules: _Rules) -> tuple[int, int, int, int]:
    """Remove the boots ``ids`` that the rules still remove, with their captures and
    runtime batches, in one transaction: (boots, captures, capture bytes, batches)."""
    with writer(engine) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            # Ingest's order: a boot an ingest holds is judged once that ingest committed.
            conn.execute(select(boots.c.id).where(boots.c.id.in_(ids), rules.boot_condition())
                         .order_by(boots.c.host_id, boots.c.boot_id).with_for_update())
        gone = conn.execute(delete(boots).where(boots.c.id.in_(ids), rules.boot_condition())
                            .returning(boots.c.host_id, boots.c.boot_id, boots.c.capture_id)
                            ).all()
        if not gone:
            return 0, 0, 0, 0
        cap_ids = sorted(r.capture_id for r in gone if r.capture_id is not None)
        freed = conn.execute(delete(captures).where(
            captures.c.id.in_(cap_ids), ~exists().where(boots.c.capture_id == captures.c.id))
            .returning(captures.c.size)).scalars().all() if cap_ids else []
        keys = sorted({(r.host_id, r.boot_id) for r in gone})
        batches = conn.execute(delete(runtime_batches).where(
            tuple_(runtime_batches.c.host_id, runtime_batches.c.boot_id).in_(keys),
            ~exists().where(boots.c.host_id == runtime_batches.c.host_id,
                            boots.c.boot_id == runtime_batches.c.boot_id))
            .returning(runtime_batches.c.id)).all()
    return len(gone), len(freed), sum(freed), len(batches)


def _remove_where(engine: Engine, table: Any, condition: ColumnElement[bool],
                  lock_order: Any) -> int:
    """Remove the rows of ``table`` that ``condition`` holds for, a chunk a transaction,
    each DELETE checking the condition again; on PostgreSQL the rows are first locked in
    ``lock_order``, the order every writer locks them in."""
    with engine.connect() as conn:
        ids = conn.execute(select(table.c.id).where(condition).order_by(table.c.id)).scalars().all()
        conn.rollback()
    removed = 0
    for chunk in _chunks(ids):
        with writer(engine) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(select(table.c.id).where(table.c.id.in_(chunk), condition)
                             .order_by(lock_order).with_for_update())
            removed += len(conn.execute(delete(table).where(table.c.id.in_(chunk), condition)
                                        .returning(table.c.id)).all())
    return removed


def prune(engine: Engine, *, older_than: timedelta | None, keep: int | None, now: datetime,
          dry_run: bool = False) -> PruneReport:
    """Remove the boots captured before ``now - older_than`` and those past the newest
    ``keep`` of their host, with what belongs to them (the module's docstring says what);
    with ``dry_run``, only count them. At least one rule is needed, and ``keep`` is at
    least 1."""
    if older_than is None and keep is None:
        raise ValueError("prune needs a rule: older_than, keep, or both")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    if older_than is not None and older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, not {older_than}")
    rules = _Rules(None if older_than is None else as_utc(now) - older_than, keep)
    if dry_run:
        return _dry_run(engine, rules)
    with engine.connect() as conn:
        ids = [r.id for r in _doomed_boots(conn, rules)]
        conn.rollback()
    n_boots = n_captures = n_bytes = n_batches = 0
    for chunk in _chunks(ids):
        b, c, size, rb = _remove_boots(engine, chunk, rules)
        n_boots, n_captures, n_bytes, n_batches = (n_boots + b, n_captures + c, n_bytes + size,
                                                   n_batches + rb)
    n_batches += _remove_where(engine, runtime_batches, _orphan_batches(rules),
                               runtime_batches.c.id)
    n_hosts = _remove_where(engine, hosts, _empty_host(rules), hosts.c.machine_id)
    return PruneReport(n_boots, n_captures, n_batches, n_hosts, n_bytes, False)
