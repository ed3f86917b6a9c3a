"""Ingest capture files into the store, and rebuild ledgers from the stored captures.

:func:`prepare` does the parsing and the ledger outside any transaction (pure).
:func:`ingest` then writes one capture in one transaction, with bulk inserts:

- a new boot is stored (``new``);
- the same file again is a counted no-op (``duplicate``);
- a capture of a stored boot taken later than the stored one replaces it, ledger and
  events included (``replaced``); an earlier one is a counted no-op (``older``).

Boots are keyed by (machine id, boot id). On PostgreSQL, many daemons may ingest at once:
the host and boot rows are created with ``ON CONFLICT DO NOTHING`` and the boot row is
then locked (``SELECT … FOR UPDATE``), so two captures of one boot are decided one after
the other and no boot is lost or doubled. On SQLite, ``BEGIN IMMEDIATE`` serialises
writers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from memledger.store.db import as_utc, writer
from memledger.store.events import event_rows
from memledger.store.ledger import compute_ledger
from memledger.store.rows import dialect_insert, upsert_host
from memledger.store.schema import boots, captures, events, hosts, ledgers
from memledger.tracer.capture import CaptureError, Manifest, capture_evidence, unpack
from memledger.tracer.evidence import NotAKernelLog
from sqlalchemy import Connection, Engine, delete, insert, select, update

__all__ = (
    "BadCapture",
    "IngestResult",
    "Prepared",
    "ReprocessReport",
    "Status",
    "ingest",
    "ingest_bytes",
    "prepare",
    "reprocess",
)

Status = Literal["new", "replaced", "duplicate", "older"]
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


@dataclass(slots=True)
class Prepared:
    """A capture parsed and computed, ready to be written."""

    data: bytes
    sha256: str
    manifest: Manifest
    boot: dict[str, Any]
    ledger: dict[str, Any]
    events: list[dict[str, Any]]


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
    dmi = doc["firmware"]["dmi"] or {}
    bs, low = doc["efi_boot_services"], doc["low_memory"]
    boot = {
        "kernel_release": (doc["kernel"]["release"] or cap.manifest.kernel_release or None),
        "cmdline": doc["kernel"]["cmdline"],
        "efi": doc["firmware"]["efi"],
        "firmware_vendor": dmi.get("bios_vendor") or doc["firmware"]["efi_vendor"],
        "firmware_version": dmi.get("bios_version"),
        "product": dmi.get("product_name"),
        "fidelity": doc["fidelity"],
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
        "document": doc,
    }
    return Prepared(data, sha, cap.manifest, boot, ledger, event_rows(ev))


def prepare(data: bytes, version: str) -> Prepared:
    """Parse a capture file's bytes and compute its ledger. Raises :class:`BadCapture`."""
    return _computed(data, hashlib.sha256(data).hexdigest(), version)


def _locked_boot(conn: Connection, host_pk: int, boot_id: str) -> tuple[int, int | None]:
    conn.execute(dialect_insert(conn)(boots).values(host_id=host_pk, boot_id=boot_id)
                 .on_conflict_do_nothing(index_elements=["host_id", "boot_id"]))
    row = conn.execute(select(boots.c.id, boots.c.capture_id)
                       .where(boots.c.host_id == host_pk, boots.c.boot_id == boot_id)
                       .with_for_update()).one()
    return row.id, row.capture_id


def _write_boot(conn: Connection, boot_pk: int, p: Prepared, now: datetime) -> None:
    """Replace the boot's columns, ledger and events with ``p``'s."""
    conn.execute(delete(events).where(events.c.boot_pk == boot_pk))
    conn.execute(delete(ledgers).where(ledgers.c.boot_pk == boot_pk))
    conn.execute(update(boots).where(boots.c.id == boot_pk).values(ingested_at=now, **p.boot))
    conn.execute(insert(ledgers).values(boot_pk=boot_pk, computed_at=now, **p.ledger))
    if p.events:
        conn.execute(insert(events), [{"boot_pk": boot_pk, **row} for row in p.events])


def ingest(engine: Engine, p: Prepared, origin: str | None = None,
           now: datetime | None = None) -> IngestResult:
    """Store one prepared capture, in one transaction."""
    now = now or datetime.now(UTC)
    m = p.manifest
    with writer(engine) as conn, conn.begin():
        host_pk = upsert_host(conn, m.machine_id, m.hostname, now)
        boot_pk, old_capture = _locked_boot(conn, host_pk, m.boot_id)
        status: Status = "new"
        if old_capture is not None:
            old = conn.execute(select(captures.c.sha256, captures.c.captured_at)
                               .where(captures.c.id == old_capture)).one()
            if old.sha256 == p.sha256:
                status = "duplicate"
            elif as_utc(old.captured_at) >= m.captured_at:
                status = "older"
            else:
                status = "replaced"
        if status in ("new", "replaced"):
            cap_pk = conn.execute(insert(captures).values(
                sha256=p.sha256, size=len(p.data), format_version=m.format_version,
                memledger_version=m.memledger_version, captured_at=m.captured_at,
                ingested_at=now, origin=origin, data=p.data,
            ).returning(captures.c.id)).scalar_one()
            conn.execute(update(boots).where(boots.c.id == boot_pk)
                         .values(capture_id=cap_pk, captured_at=m.captured_at))
            if old_capture is not None:
                conn.execute(delete(captures).where(captures.c.id == old_capture))
            _write_boot(conn, boot_pk, p, now)
    return IngestResult(status, m.machine_id, m.boot_id, p.sha256, p.boot["kernel_release"])


def ingest_bytes(engine: Engine, data: bytes, version: str, origin: str | None = None,
                 now: datetime | None = None) -> IngestResult:
    """:func:`prepare` then :func:`ingest`."""
    return ingest(engine, prepare(data, version), origin, now)


@dataclass(slots=True)
class ReprocessReport:
    boots: int = 0
    changed: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (machine id, boot id, why)


def reprocess(engine: Engine, version: str,
              progress: Callable[[int, int], None] | None = None) -> ReprocessReport:
    """Recompute every boot's ledger and events from its stored raw capture.

    One transaction per boot; a boot whose capture no longer parses keeps its old ledger
    and is reported.
    """
    report = ReprocessReport()
    with engine.connect() as conn:
        todo = conn.execute(select(boots.c.id, boots.c.capture_id, hosts.c.machine_id, boots.c.boot_id)
                            .join(hosts, hosts.c.id == boots.c.host_id)
                            .where(boots.c.capture_id.is_not(None))
                            .order_by(boots.c.id)).all()
        conn.rollback()
    for done, row in enumerate(todo, 1):
        with writer(engine) as conn, conn.begin():
            cap = conn.execute(select(captures.c.data, captures.c.sha256)
                               .where(captures.c.id == row.capture_id)).one()
            before = conn.execute(select(ledgers.c.document)
                                  .where(ledgers.c.boot_pk == row.id)).scalar_one_or_none()
            try:
                p = _computed(bytes(cap.data), cap.sha256, version)
            except BadCapture as exc:
                report.failed.append((row.machine_id, row.boot_id, str(exc)))
            else:
                _write_boot(conn, row.id, p, datetime.now(UTC))
                report.changed += before != json.loads(json.dumps(p.ledger["document"]))
            report.boots += 1
        if progress is not None:
            progress(done, len(todo))
    return report
