"""Store the collector's runtime event batches, and sum them per boot.

A batch is one spool file (tracer/runtime.py). It is stored once, keyed by its sha256,
in one transaction with its events, so a crash between the commit and the spool move
only makes the second ingest a counted duplicate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from memledger.store.bulk import insert_rows
from memledger.store.db import writer
from memledger.store.rows import HostKey, dialect_insert, upsert_host
from memledger.store.schema import hosts, runtime_batches, runtime_events
from memledger.store.sums import wide_sum
from memledger.store.trust import Untrusted, check_not_ahead
from memledger.tracer.runtime import Batch, BatchError, parse_batch
from sqlalchemy import Connection, Engine, bindparam, func, select

__all__ = ("BatchError", "BatchResult", "RuntimeTotals", "ingest_batch", "runtime_totals",
           "store_batch")


@dataclass(frozen=True, slots=True)
class BatchResult:
    status: Literal["new", "duplicate"]
    machine_id: str
    boot_id: str
    source: str
    events: int
    dropped: int


def ingest_batch(engine: Engine, data: bytes, origin: str | None = None,
                 now: datetime | None = None) -> BatchResult:
    """Parse and store one batch. Raises :class:`BatchError` for a bad file."""
    return store_batch(engine, parse_batch(data), hashlib.sha256(data).hexdigest(), origin, now)


def store_batch(engine: Engine, batch: Batch, sha: str, origin: str | None = None,
                now: datetime | None = None, sender: str = "") -> BatchResult:
    """Store one parsed batch, keyed by ``sha`` (its file's sha256), for the host of its
    machine id that ``sender`` (a fleet daemon's authenticated client, '' here) sent. Raises
    :class:`BatchError` for a batch written ahead of ``now`` by more than
    :data:`~memledger.store.trust.MAX_AHEAD`."""
    h = batch.header
    now = now or datetime.now(UTC)
    try:
        check_not_ahead(h.written_at, "line 1: written_at", now)
    except Untrusted as exc:
        raise BatchError(str(exc)) from None
    with writer(engine) as conn, conn.begin():
        host_pk = upsert_host(conn, HostKey(h.machine_id, sender), h.hostname, now)
        batch_pk = conn.execute(dialect_insert(conn)(runtime_batches).values(
            sha256=sha, host_id=host_pk, boot_id=h.boot_id, source=h.source,
            memledger_version=h.memledger_version, written_at=h.written_at, ingested_at=now,
            origin=origin, event_count=len(batch.events), dropped=h.dropped,
        ).on_conflict_do_nothing(index_elements=["sha256"]).returning(runtime_batches.c.id)
        ).scalar_one_or_none()
        if batch_pk is None:
            return BatchResult("duplicate", h.machine_id, h.boot_id, h.source, 0, 0)
        if batch.events:
            insert_rows(conn, runtime_events, [
                {"batch_id": batch_pk, "seq": e.seq, "ts": e.ts, "kind": e.kind,
                 "function": e.function, "phys_start": e.phys_start, "phys_end": e.phys_end,
                 "size": e.bytes, "caller": e.caller, "detail": e.detail}
                for e in batch.events])
    return BatchResult("new", h.machine_id, h.boot_id, h.source, len(batch.events), h.dropped)


@dataclass(slots=True)
class RuntimeTotals:
    """One boot's runtime events, summed. Empty dicts when nothing arrived."""

    freed: dict[str, int]            # function -> bytes (kind freed)
    offlined: dict[str, int]         # function -> bytes
    managed: dict[str, int]          # caller -> net bytes
    logged: dict[str, int]           # "Freeing X" -> bytes the kernel printed
    events: dict[str, int]           # source -> events
    dropped: dict[str, int]          # source -> records lost


# Built once, with bound parameters: the daemon runs them at every host-mode scrape, and
# building the subquery cost more than running both statements.
_BATCHES = (select(runtime_batches.c.id, runtime_batches.c.source)
            .join(hosts, hosts.c.id == runtime_batches.c.host_id)
            .where(hosts.c.machine_id == bindparam("machine_id"),
                   runtime_batches.c.boot_id == bindparam("boot_id"))
            .subquery())
_PER_SOURCE = (select(_BATCHES.c.source, func.count(runtime_batches.c.id),
                      wide_sum(runtime_batches.c.dropped), wide_sum(runtime_batches.c.event_count))
               .join(runtime_batches, runtime_batches.c.id == _BATCHES.c.id)
               .group_by(_BATCHES.c.source))
_SIZES = (select(runtime_events.c.kind, runtime_events.c.function, runtime_events.c.caller,
                 wide_sum(runtime_events.c.size))
          .join(_BATCHES, _BATCHES.c.id == runtime_events.c.batch_id)
          .where(runtime_events.c.size.is_not(None))
          .group_by(runtime_events.c.kind, runtime_events.c.function, runtime_events.c.caller))


def runtime_totals(conn: Connection, machine_id: str, boot_id: str) -> RuntimeTotals:
    params = {"machine_id": machine_id, "boot_id": boot_id}
    out = RuntimeTotals({}, {}, {}, {}, {}, {})
    for row in conn.execute(_PER_SOURCE, params):
        out.dropped[row[0]] = int(row[2] or 0)
        out.events[row[0]] = int(row[3] or 0)
    rows = conn.execute(_SIZES, params)
    for kind, function, caller, total in rows:
        target = {"freed": out.freed, "offlined": out.offlined, "log": out.logged}.get(kind)
        if kind == "managed":
            out.managed[caller or "?"] = out.managed.get(caller or "?", 0) + int(total)
        elif target is not None:
            target[function] = target.get(function, 0) + int(total)
    return out

