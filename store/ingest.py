"""Ingest capture files into the store, and rebuild ledgers from the stored captures.

:func:`prepare` does the parsing and the ledger outside any transaction (pure).
:func:`ingest_many` then writes a batch of captures in one transaction, with a fixed
handful of bulk statements whatever the batch's size (:func:`ingest` is a batch of one).
For each capture:

- a new boot is stored (``new``);
- the same file again is a counted no-op (``duplicate``);
- a capture of a stored boot taken later in that boot than the stored one replaces it,
  ledger and events included (``replaced``); an earlier one is a counted no-op
  (``older``). Which is later is :func:`~memledger.store.trust.is_later`'s call: the
  boot's own clock where it can be believed, never a date alone;
- a capture the database refuses (a value a column cannot hold) is ``refused`` with the
  database's reason, and the others of its batch are still stored: a batch the database
  refuses is written again one capture per transaction, so the outcome is always that
  of one transaction per capture.

Captures of one boot within a batch are decided in the batch's order, as if they had
come one by one; only the last one that wins is written. A host's name is the one its
newest boot (the last one the store first saw) was last stored with: a duplicate, an
older capture or a later capture of an older boot never renames a host.

Boots are keyed by (machine id, boot id). On PostgreSQL, many daemons may ingest at once:
the host and boot rows are created with ``ON CONFLICT DO NOTHING`` and the boot rows are
then locked (``SELECT … FOR UPDATE``), so two captures of one boot are decided one after
the other and no boot is lost or doubled. Every keyed statement goes in key order, so two
batches lock rows in the same order and cannot deadlock. On SQLite, ``BEGIN IMMEDIATE``
serialises writers. :func:`reprocess` writes a ledger only under the same lock and only
while its boot still points at the capture the ledger was computed from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from memledger.ledger.compute import compute_ledger
from memledger.ledger.measures import BOOT_COLUMNS, anomaly_codes, boot_columns
from memledger.store.bulk import insert_rows
from memledger.store.db import as_utc, describe_error, is_permanent, writer
from memledger.store.events import event_rows
from memledger.store.rows import HostKey, dialect_insert, host_pks
from memledger.store.schema import boots, captures, events, hosts, ledger_documents, ledgers
from memledger.store.trust import CaptureTime, Untrusted, check_not_ahead, check_widths, is_later
from memledger.tracer.caps import CMDLINE_MAX, DMI_DIR, PRINTK_RECORD_MAX, UTS_LEN
from memledger.tracer.capture import CaptureError, Manifest, capture_evidence, unpack
from memledger.tracer.evidence import NotAKernelLog
from memledger.tracer.sysfs import HARDWARE_FIELDS, hardware_digest
from sqlalchemy import (
    Connection,
    Engine,
    String,
    bindparam,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

__all__ = (
    "BadCapture",
    "IngestResult",
    "Prepared",
    "ReprocessReport",
    "Status",
    "ingest",
    "ingest_bytes",
    "ingest_many",
    "prepare",
    "reprocess",
)

Status = Literal["new", "replaced", "duplicate", "older", "refused"]
_INT64 = (-(1 << 63), (1 << 63) - 1)


class BadCapture(ValueError):
    """The capture cannot be ingested; the message is one line."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    status: Status
    machine_id: str
    boot_id: str
    sha256: str
    kernel_release: str | None
    why: str | None = None  # refused: the database's reason, one line


@dataclass(slots=True)
class Prepared:
    """A capture parsed and computed, ready to be written."""

    data: bytes
    sha256: str
    manifest: Manifest
    boot: dict[str, Any]
    ledger: dict[str, Any]  # ledgers columns, and the document (a LedgerDoc)
    events: list[dict[str, Any]]
    uptime_s: float | None = None  # the boot's /proc/uptime at the capture
    hardware: str = ""  # the digest of its DMI product UUID and serial ('' unknown)

    @property
    def taken(self) -> CaptureTime:
        return CaptureTime(self.manifest.captured_at, self.uptime_s)


def _i64(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if _INT64[0] <= value <= _INT64[1] else None



def _computed(data: bytes, sha: str, version: str) -> Prepared:
    try:
        cap = unpack(data)
        evidence = capture_evidence(cap, f"sha256:{sha}")
    except (CaptureError, NotAKernelLog) as exc:
        raise BadCapture(str(exc)) from None
    ev = evidence[-1]  # the live boot: the one the manifest's boot id names
    doc = compute_ledger(ev).as_dict()
    bs, low = doc["efi_boot_services"], doc["low_memory"]
    boot = {
        "kernel_release": (doc["kernel"]["release"] or cap.manifest.kernel_release or None),
        "cmdline": doc["kernel"]["cmdline"],
        **boot_columns(doc),
    }
    ledger = {
        "schema_version": doc["schema_version"],
        "computed_with": version,
        "bs_total_bytes": _i64(bs["total_bytes"]),
        "bs_reclaimed_bytes": _i64(bs["reclaimed_bytes"]),
        "bs_kept_bytes": _i64(bs["kept_bytes"]),
        "bs_leaked_bytes": _i64(bs["leaked_bytes"]),
        "low_usable_bytes": _i64(low["usable_bytes"]),
        "low_reserved_bytes": _i64(low["reserved_bytes"]),
        "low_boot_services_bytes": _i64(low["boot_services_bytes"]),
        "low_freed_bytes": _i64(low["freed_bytes"]),
        "anomaly_count": len(doc["anomalies"]),
        "anomaly_codes": anomaly_codes(doc),
        "memory_bytes": _i64(doc["kernel_accounting"]["present_bytes"]),
        "document": doc,
    }
    shown = {f: text.decode("utf-8", "replace").strip().split("\n")[0] for f in HARDWARE_FIELDS
             if (text := cap.tree.read(f"{DMI_DIR}/{f}")) is not None}
    return Prepared(data, sha, cap.manifest, boot, ledger, event_rows(ev), ev.uptime_s,
                    hardware_digest(shown))


def prepare(data: bytes, version: str, now: datetime | None = None) -> Prepared:
    """Parse a capture file's bytes and compute its ledger. Raises :class:`BadCapture`,
    also for a capture dated ahead of ``now`` (this store's clock) by more than
    :data:`~memledger.store.trust.MAX_AHEAD`."""
    p = _computed(data, hashlib.sha256(data).hexdigest(), version)
    try:
        check_not_ahead(p.manifest.captured_at, "captured_at", now)
        _check_texts(p)
    except Untrusted as exc:
        raise BadCapture(str(exc)) from None
    return p


# A boot's release and command line as the kernel writes them, whatever they were read
# from (the capture's files or its kernel log).
_BOOT_CAPS = {"kernel_release": UTS_LEN, "cmdline": CMDLINE_MAX}


# events.function and events.caller: one kernel log or trace line holds them.
_EVENT_TEXT = PRINTK_RECORD_MAX


def _check_texts(p: Prepared) -> None:
    """Every text bound for a bounded column fits it, checked before the database so that
    SQLite and PostgreSQL refuse the same captures. Raises :class:`Untrusted`."""
    check_widths(boots, p.boot, _BOOT_CAPS)
    check_widths(hosts, {"hostname": p.manifest.hostname})
    check_widths(captures, {"memledger_version": p.manifest.memledger_version})
    for row in p.events:
        if len(row["function"]) > _EVENT_TEXT or len(row["caller"] or "") > _EVENT_TEXT:
            check_widths(events, {"function": row["function"], "caller": row["caller"]})


def _columns(p: Prepared) -> dict[str, Any]:
    """The ledger's headline columns (its document goes to ledger_documents)."""
    return {k: v for k, v in p.ledger.items() if k != "document"}


_BOOT_COLUMNS = ("kernel_release", "cmdline", *BOOT_COLUMNS)


def _key(p: Prepared, sender: str) -> HostKey:
    return HostKey(p.manifest.machine_id, sender, p.hardware)


def _rename(conn: Connection, written: list[tuple[int, int, Prepared]]) -> None:
    """Name each host as its newest boot's capture names it, when that capture was just
    written (``written``: host pk, boot pk, capture). The newest boot is the one the store
    first saw last (the largest boot pk), an order no writer's clock sets."""
    host_ids = sorted({h for h, _, _ in written})
    newest = {h: pk for h, pk in conn.execute(select(boots.c.host_id, func.max(boots.c.id))
                                              .where(boots.c.host_id.in_(host_ids))
                                              .group_by(boots.c.host_id))}
    names = {h: p.manifest.hostname for h, pk, p in written
             if pk == newest.get(h) and p.manifest.hostname}
    if names:
        conn.execute(update(hosts).where(hosts.c.id == bindparam("b_id"))
                     .values(hostname=bindparam("b_hostname", type_=String)),
                     [{"b_id": h, "b_hostname": n} for h, n in sorted(names.items())])


def _locked_boots(conn: Connection, keys: list[tuple[int, str]]) -> dict[tuple[int, str], Any]:
    """The boot rows for ``keys`` (host pk, boot id), created when new, locked. A stored
    boot's row is locked by the INSERT itself (DO UPDATE, to the value it has): a prune
    (store/prune.py) that removes it waits for this transaction, or this one finds it
    gone and creates it again."""
    stmt = dialect_insert(conn)(boots)
    conn.execute(stmt.on_conflict_do_update(index_elements=["host_id", "boot_id"],
                                            set_={"ingested_at": boots.c.ingested_at}),
                 [{"host_id": h, "boot_id": b} for h, b in keys])
    rows = conn.execute(select(boots.c.id, boots.c.host_id, boots.c.boot_id, boots.c.capture_id)
                        .where(tuple_(boots.c.host_id, boots.c.boot_id).in_(keys))
                        .order_by(boots.c.id).with_for_update()).all()
    return {(r.host_id, r.boot_id): r for r in rows}


def _decide(items: Sequence[tuple[Prepared, str | None]], key_of: list[tuple[int, str]],
            current: dict[tuple[int, str], tuple[str, CaptureTime]]) -> list[Status]:
    """Each capture's status, in order; ``current`` becomes what each boot ends up with."""
    out: list[Status] = []
    for (p, _), key in zip(items, key_of, strict=True):
        cur = current.get(key)
        status: Status
        if cur is None:
            status = "new"
        elif cur[0] == p.sha256:
            status = "duplicate"
        elif is_later(p.taken, cur[1]):
            status = "replaced"
        else:
            status = "older"
        if status in ("new", "replaced"):
            current[key] = (p.sha256, p.taken)
        out.append(status)
    return out


def _replace_derived(conn: Connection, items: list[tuple[int, Prepared]], now: datetime) -> None:
    """Give each boot (pk) the columns, ledger, document and events of its prepared
    capture, dropping the ones it had."""
    pks = [pk for pk, _ in items]
    for table in (events, ledgers, ledger_documents):
        conn.execute(delete(table).where(table.c.boot_pk.in_(pks)))
    conn.execute(update(boots).where(boots.c.id == bindparam("b_id")).values(
        ingested_at=now, **{c: bindparam(f"b_{c}", type_=boots.c[c].type) for c in _BOOT_COLUMNS}),
        [{"b_id": pk, **{f"b_{c}": p.boot[c] for c in _BOOT_COLUMNS}} for pk, p in items])
    conn.execute(insert(ledgers), [{"boot_pk": pk, "computed_at": now, **_columns(p)}
                                   for pk, p in items])
    conn.execute(insert(ledger_documents), [{"boot_pk": pk, "document": p.ledger["document"]}
                                            for pk, p in items])
    insert_rows(conn, events, [{"boot_pk": pk, **row} for pk, p in items for row in p.events])


def _write(conn: Connection, winners: list[tuple[int, Prepared, str | None]],
           superseded: list[int], now: datetime) -> None:
    """Store each winning capture and point its boot at it, with the capture's columns,
    ledger and events; then drop the captures they replace."""
    cap_ids = conn.execute(insert(captures).returning(captures.c.id, sort_by_parameter_order=True), [
        {"sha256": p.sha256, "size": len(p.data), "format_version": p.manifest.format_version,
         "memledger_version": p.manifest.memledger_version, "captured_at": p.manifest.captured_at,
         "uptime_s": p.uptime_s, "ingested_at": now, "origin": origin, "data": p.data}
        for _, p, origin in winners]).scalars().all()
    conn.execute(update(boots).where(boots.c.id == bindparam("b_id")).values(
        capture_id=bindparam("b_capture_id"), captured_at=bindparam("b_captured_at")), [
        {"b_id": pk, "b_capture_id": cap, "b_captured_at": p.manifest.captured_at}
        for (pk, p, _), cap in zip(winners, cap_ids, strict=True)])
    if superseded:
        conn.execute(delete(captures).where(captures.c.id.in_(superseded)))
    _replace_derived(conn, [(pk, p) for pk, p, _ in winners], now)


def _ingest_batch(engine: Engine, items: Sequence[tuple[Prepared, str | None]],
                  now: datetime, senders: Sequence[str]) -> list[Status]:
    """Store prepared captures (each sent by its ``senders`` entry) in one transaction;
    their statuses in order."""
    with writer(engine) as conn, conn.begin():
        host_keys = [_key(p, sender) for (p, _), sender in zip(items, senders, strict=True)]
        names: dict[HostKey, str | None] = {}
        for (p, _), hk in zip(items, host_keys, strict=True):
            names.setdefault(hk, p.manifest.hostname)  # a new host: the batch's first name
        host_pk = host_pks(conn, names, now)
        key_of = [(host_pk[hk], p.manifest.boot_id)
                  for (p, _), hk in zip(items, host_keys, strict=True)]
        rows = _locked_boots(conn, sorted(set(key_of)))
        old_ids = [r.capture_id for r in rows.values() if r.capture_id is not None]
        old = {r.id: (r.sha256, CaptureTime(as_utc(r.captured_at), r.uptime_s))
               for r in conn.execute(
                   select(captures.c.id, captures.c.sha256, captures.c.captured_at,
                          captures.c.uptime_s).where(captures.c.id.in_(old_ids)))
               } if old_ids else {}
        current = {k: old[r.capture_id] for k, r in rows.items() if r.capture_id is not None}
        statuses = _decide(items, key_of, current)
        # The last capture that won for each boot is the one written.
        last: dict[tuple[int, str], tuple[Prepared, str | None]] = {}
        for (p, origin), key, status in zip(items, key_of, statuses, strict=True):
            if status in ("new", "replaced"):
                last[key] = (p, origin)
        if last:
            winners = [(rows[k].id, p, origin) for k, (p, origin) in sorted(last.items())]
            superseded = sorted(rows[k].capture_id for k in last if rows[k].capture_id is not None)
            _write(conn, winners, superseded, now)
            _rename(conn, [(k[0], rows[k].id, p) for k, (p, _) in last.items()])
    return statuses


def _result(p: Prepared, status: Status, why: str | None = None) -> IngestResult:
    return IngestResult(status, p.manifest.machine_id, p.manifest.boot_id, p.sha256,
                        p.boot["kernel_release"], why)


def ingest_many(engine: Engine, items: Sequence[tuple[Prepared, str | None]],
                now: datetime | None = None, sender: str = "",
                senders: Sequence[str] | None = None) -> list[IngestResult]:
    """Store prepared captures (each with its origin); their results in order. ``sender``
    is who a fleet daemon authenticated as having sent them ('' for captures stored on the
    host itself or by ``ingest``): a host's boots are only ever those its sender sent.
    ``senders``, when given, names each capture's own sender instead (a fleet daemon
    stores what many hosts sent in one batch).

    One transaction for the batch; when the database refuses a value in it (DataError,
    IntegrityError: :func:`~memledger.store.db.is_permanent`), each capture again in a
    transaction of its own, so that only the one it cannot hold is ``refused``. Other
    database errors (the server is down, the disk full) are raised: nothing is stored
    and every capture can be tried again."""
    if not items:
        return []
    if senders is None:
        senders = [sender] * len(items)
    elif len(senders) != len(items):
        raise ValueError(f"{len(senders)} senders for {len(items)} captures")
    now = now or datetime.now(UTC)
    try:
        statuses = _ingest_batch(engine, items, now, senders)
    except SQLAlchemyError as exc:
        if not is_permanent(exc):
            raise
        if len(items) == 1:
            return [_result(items[0][0], "refused", describe_error(engine.url, exc))]
        return [ingest_many(engine, [item], now, s)[0]
                for item, s in zip(items, senders, strict=True)]
    return [_result(p, status) for (p, _), status in zip(items, statuses, strict=True)]


def ingest(engine: Engine, p: Prepared, origin: str | None = None,
           now: datetime | None = None, sender: str = "") -> IngestResult:
    """Store one prepared capture, in one transaction (``refused``, with the database's
    reason, when the database cannot hold one of its values)."""
    return ingest_many(engine, [(p, origin)], now, sender)[0]


def ingest_bytes(engine: Engine, data: bytes, version: str, origin: str | None = None,
                 now: datetime | None = None, sender: str = "") -> IngestResult:
    """:func:`prepare` then :func:`ingest`."""
    return ingest(engine, prepare(data, version), origin, now, sender)


@dataclass(slots=True)
class ReprocessReport:
    boots: int = 0
    changed: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (machine id, boot id, why)


def reprocess(engine: Engine, version: str,
              progress: Callable[[int, int], None] | None = None) -> ReprocessReport:
    """Recompute every boot's ledger and events from its stored raw capture.

    Each boot's capture is parsed outside any transaction; its ledger is then written in
    a transaction of its own that holds the boot's row (``FOR UPDATE``; SQLite's write
    lock) and only if the boot still points at that capture. When a writer replaced the
    capture meanwhile, the new one is parsed and tried again; a boot removed meanwhile is
    left alone. A boot whose capture no longer parses keeps its old ledger and is
    reported.
    """
    report = ReprocessReport()
    with engine.connect() as conn:
        todo = conn.execute(select(boots.c.id, hosts.c.machine_id, boots.c.boot_id)
                            .join(hosts, hosts.c.id == boots.c.host_id)
                            .where(boots.c.capture_id.is_not(None))
                            .order_by(boots.c.id)).all()
        conn.rollback()
    for done, row in enumerate(todo, 1):
        outcome = _reprocess_boot(engine, row.id, version)
        if outcome is not None:
            report.boots += 1
            if isinstance(outcome, str):
                report.failed.append((row.machine_id, row.boot_id, outcome))
            else:
                report.changed += outcome
        if progress is not None:
            progress(done, len(todo))
    return report


_CAPTURE_OF_BOOT = (select(captures.c.id, captures.c.data, captures.c.sha256)
                    .join(boots, boots.c.capture_id == captures.c.id)
                    .where(boots.c.id == bindparam("boot_pk")))


def _reprocess_boot(engine: Engine, boot_pk: int, version: str) -> bool | str | None:
    """Rebuild one boot's ledger from the capture it points at: True when the document
    changed, False when not, the reason when the capture does not parse, None when the
    boot (or its capture) is gone."""
    while True:
        with engine.connect() as conn:
            cap = conn.execute(_CAPTURE_OF_BOOT, {"boot_pk": boot_pk}).one_or_none()
            conn.rollback()
        if cap is None:
            return None
        try:
            p = _computed(bytes(cap.data), cap.sha256, version)
        except BadCapture as exc:
            return str(exc)
        with writer(engine) as conn, conn.begin():
            now_points_at = conn.execute(select(boots.c.capture_id).where(boots.c.id == boot_pk)
                                         .with_for_update()).scalar_one_or_none()
            if now_points_at != cap.id:
                continue  # replaced (or removed) since it was read: read what is there now
            before = conn.execute(select(ledger_documents.c.document)
                                  .where(ledger_documents.c.boot_pk == boot_pk)).scalar_one_or_none()
            _replace_derived(conn, [(boot_pk, p)], datetime.now(UTC))
            return bool(before != json.loads(json.dumps(p.ledger["document"])))
