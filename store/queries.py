"""Read-side queries over the store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from memledger.store.db import as_utc
from memledger.store.schema import boots, captures, events, hosts, ledger_documents, ledgers
from sqlalchemy import Engine, func, select

__all__ = ("FLEET_COLUMNS", "boot_ledger", "count_rows", "fleet_rows", "latest_boots", "list_boots")



def _iso(when: datetime | None) -> str | None:
    return None if when is None else as_utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


def list_boots(engine: Engine, limit: int | None = None) -> list[dict[str, Any]]:
    """Stored boots, newest capture first, with their headline ledger figures."""
    q = (select(hosts.c.machine_id, hosts.c.hostname, boots.c.boot_id, boots.c.kernel_release,
                boots.c.captured_at, boots.c.efi, boots.c.firmware_vendor,
                boots.c.firmware_version, boots.c.product, ledgers.c.bs_total_bytes,
                ledgers.c.bs_reclaimed_bytes, ledgers.c.bs_kept_bytes, ledgers.c.bs_leaked_bytes,
                ledgers.c.low_reserved_bytes, ledgers.c.low_freed_bytes, ledgers.c.anomaly_count)
         .join(hosts, hosts.c.id == boots.c.host_id)
         .join(ledgers, ledgers.c.boot_pk == boots.c.id)
         .order_by(boots.c.captured_at.desc(), boots.c.id.desc()))
    if limit is not None:
        q = q.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return [{
        "machine_id": r.machine_id,
        "hostname": r.hostname,
        "boot_id": r.boot_id,
        "kernel_release": r.kernel_release,
        "captured_at": _iso(r.captured_at),
        "efi": r.efi,
        "firmware_vendor": r.firmware_vendor,
        "firmware_version": r.firmware_version,
        "product": r.product,
        "efi_boot_services": {"total_bytes": r.bs_total_bytes,
                              "reclaimed_bytes": r.bs_reclaimed_bytes,
                              "kept_bytes": r.bs_kept_bytes,
                              "leaked_bytes": r.bs_leaked_bytes},
        "low_memory": {"reserved_bytes": r.low_reserved_bytes, "freed_bytes": r.low_freed_bytes},
        "anomalies": r.anomaly_count,
    } for r in rows]


def boot_ledger(engine: Engine, machine_id: str, boot_id: str) -> dict[str, Any] | None:
    """The stored ledger document of one boot."""
    q = (select(ledger_documents.c.document).join(boots, boots.c.id == ledger_documents.c.boot_pk)
         .join(hosts, hosts.c.id == boots.c.host_id)
         .where(hosts.c.machine_id == machine_id, boots.c.boot_id == boot_id))
    with engine.connect() as conn:
        doc: dict[str, Any] | None = conn.execute(q).scalar_one_or_none()
    return doc


def count_rows(engine: Engine) -> dict[str, int]:
    """Row counts of the main tables."""
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (hosts, boots, captures, ledgers, events)}


def latest_boots(engine: Engine, machine_id: str | None, n: int = 2) -> list[dict[str, Any]]:
    """The newest ``n`` boots (by capture time) of ``machine_id`` with their ledger
    documents; when that machine has none (or None is given), of the machine whose boot
    was captured last."""
    with engine.connect() as conn:
        host_pk = None
        if machine_id is not None:
            host_pk = conn.execute(select(hosts.c.id).where(hosts.c.machine_id == machine_id)
                                   ).scalar_one_or_none()
        if host_pk is None:
            host_pk = conn.execute(select(boots.c.host_id).where(boots.c.capture_id.is_not(None))
                                   .order_by(boots.c.captured_at.desc(), boots.c.id.desc())
                                   .limit(1)).scalar_one_or_none()
        if host_pk is None:
            return []
        rows = conn.execute(
            select(hosts.c.machine_id, boots.c.boot_id, boots.c.kernel_release, boots.c.efi,
                   boots.c.firmware_vendor, boots.c.firmware_version, boots.c.product,
                   boots.c.captured_at, ledger_documents.c.document)
            .join(ledger_documents, ledger_documents.c.boot_pk == boots.c.id)
            .join(hosts, hosts.c.id == boots.c.host_id)
            .where(boots.c.host_id == host_pk)
            .order_by(boots.c.captured_at.desc(), boots.c.id.desc()).limit(n)).all()
    return [{**r._asdict(), "captured_at": as_utc(r.captured_at)} for r in rows]


FLEET_COLUMNS = ("bs_total_bytes", "bs_reclaimed_bytes", "bs_kept_bytes", "bs_leaked_bytes",
                 "low_usable_bytes", "low_reserved_bytes", "low_boot_services_bytes",
                 "low_freed_bytes", "anomaly_count")


def fleet_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every stored boot's release, firmware, host and headline ledger columns."""
    q = (select(boots.c.kernel_release, boots.c.firmware_version, boots.c.product,
                boots.c.host_id, boots.c.fidelity,
                *(ledgers.c[c] for c in FLEET_COLUMNS))
         .join(ledgers, ledgers.c.boot_pk == boots.c.id))
    with engine.connect() as conn:
        return [r._asdict() for r in conn.execute(q)]
