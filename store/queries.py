"""Read-side queries over the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any, TypedDict

from memledger.ledger.measures import reasons
from memledger.ledger.model import LedgerDoc, from_stored
from memledger.store.db import as_utc, iso_utc
from memledger.store.schema import boots, captures, events, hosts, ledger_documents, ledgers
from sqlalchemy import Connection, Engine, String, bindparam, case, func, select

__all__ = ("FLEET_COLUMNS", "SHARED_MACHINE_ID", "SHARED_MACHINE_ID_HOSTS", "STORE_COUNTS",
           "FleetGroup", "boot_ledger", "count_rows", "fleet_rows", "latest_boots", "list_boots",
           "running_and_previous")




class HeadlineBootServices(TypedDict):
    total_bytes: int | None
    reclaimed_bytes: int | None
    kept_bytes: int | None
    leaked_bytes: int | None


class HeadlineLowMemory(TypedDict):
    reserved_bytes: int | None
    freed_bytes: int | None


class BootRow(TypedDict):
    """One line of ``memledger boots``: a stored boot and its headline figures."""

    machine_id: str
    hostname: str | None
    # Who sent the host's captures to a fleet daemon ("certificate:CN", "user:NAME"); None
    # for captures stored on the host itself or by ingest.
    sender: str | None
    # Another host has the same machine id: a clone of one disk image (fix its
    # /etc/machine-id); its boots are kept apart all the same.
    shared_machine_id: bool
    boot_id: str
    kernel_release: str | None
    captured_at: str | None  # ISO 8601, UTC
    efi: bool | None
    firmware_vendor: str | None
    firmware_version: str | None
    product: str | None
    efi_boot_services: HeadlineBootServices
    low_memory: HeadlineLowMemory
    anomalies: int
    notes: list[str]


def list_boots(engine: Engine, limit: int | None = None) -> list[BootRow]:
    """Stored boots, newest capture first, with their headline ledger figures."""
    shared = (select(hosts.c.machine_id).group_by(hosts.c.machine_id)
              .having(func.count() > 1).scalar_subquery())
    q = (select(hosts.c.machine_id, hosts.c.hostname, hosts.c.sender,
                hosts.c.machine_id.in_(shared).label("shared"), boots.c.boot_id,
                boots.c.kernel_release,
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
    return [BootRow(
        machine_id=r.machine_id,
        hostname=r.hostname,
        sender=r.sender or None,
        shared_machine_id=bool(r.shared),
        boot_id=r.boot_id,
        kernel_release=r.kernel_release,
        captured_at=iso_utc(r.captured_at),
        efi=r.efi,
        firmware_vendor=r.firmware_vendor,
        firmware_version=r.firmware_version,
        product=r.product,
        efi_boot_services=HeadlineBootServices(
            total_bytes=r.bs_total_bytes, reclaimed_bytes=r.bs_reclaimed_bytes,
            kept_bytes=r.bs_kept_bytes, leaked_bytes=r.bs_leaked_bytes),
        low_memory=HeadlineLowMemory(reserved_bytes=r.low_reserved_bytes,
                                     freed_bytes=r.low_freed_bytes),
        anomalies=r.anomaly_count,
        notes=boot_notes(r.efi) + ([SHARED_MACHINE_ID] if r.shared else []),
    ) for r in rows]


SHARED_MACHINE_ID = ("another host has this machine id (a clone of one disk image); their boots "
                     "are kept apart: give each machine its own /etc/machine-id")


def boot_notes(efi: bool | None) -> list[str]:
    """What a stored boot's figures mean when they are null: "does not apply" or unknown."""
    if efi is False:
        return ["not EFI: a BIOS boot has no EFI boot services; those figures do not apply"]
    if efi is None:
        return ["unknown whether this boot was EFI (its log lost the start)"]
    return []


def boot_ledger(engine: Engine, machine_id: str, boot_id: str) -> LedgerDoc | None:
    """The stored ledger document of one boot."""
    q = (select(ledger_documents.c.document).join(boots, boots.c.id == ledger_documents.c.boot_pk)
         .join(hosts, hosts.c.id == boots.c.host_id)
         .where(hosts.c.machine_id == machine_id, boots.c.boot_id == boot_id))
    with engine.connect() as conn:
        doc = conn.execute(q).scalar_one_or_none()
    return None if doc is None else from_stored(doc)


def count_rows(engine: Engine) -> dict[str, int]:
    """Row counts of the main tables."""
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (hosts, boots, captures, ledgers, events)}


# Built once: these run at every host-mode scrape, and building a statement costs more
# than SQLite takes to run it.
# Of the hosts of one machine id (clones: migration 0007), the one holding the running boot,
# else the one seen last.
_HOST_BY_MACHINE = (
    select(hosts.c.id).where(hosts.c.machine_id == bindparam("machine_id"))
    .order_by(case((select(boots.c.id).where(boots.c.host_id == hosts.c.id,
                                              boots.c.boot_id == bindparam("running", type_=String))
                    .exists(), 0), else_=1),
              hosts.c.last_seen.desc(), hosts.c.id.desc())
    .limit(1))
# "Newest" is the order the store first saw boots in (boots.id), never a capture's date:
# that date is the writer's clock, which early in boot may run hours ahead.
_LAST_STORED_HOST = (select(boots.c.host_id).where(boots.c.capture_id.is_not(None))
                     .order_by(boots.c.id.desc()).limit(1))
_LATEST = (select(hosts.c.machine_id, boots.c.boot_id, boots.c.kernel_release, boots.c.efi,
                  boots.c.firmware_vendor, boots.c.firmware_version, boots.c.product,
                  boots.c.captured_at, ledger_documents.c.document)
           .join(ledger_documents, ledger_documents.c.boot_pk == boots.c.id)
           .join(hosts, hosts.c.id == boots.c.host_id)
           .where(boots.c.host_id == bindparam("host_pk"))
           # The running boot first, whatever its date; then the newest stored.
           .order_by(case((boots.c.boot_id == bindparam("running", type_=String), 0), else_=1),
                     boots.c.id.desc())
           .limit(bindparam("n")))
# Hosts whose machine id another host has too (clones of one disk image: migration 0007).
SHARED_MACHINE_ID_HOSTS = (
    select(func.count()).select_from(hosts)
    .where(hosts.c.machine_id.in_(select(hosts.c.machine_id).group_by(hosts.c.machine_id)
                                  .having(func.count() > 1))))
STORE_COUNTS = select(select(func.count()).select_from(boots).scalar_subquery(),
                      select(func.count()).select_from(hosts).scalar_subquery())


class StoredBoot(TypedDict):
    """One stored boot's identity and headline columns, with its ledger document."""

    machine_id: str
    boot_id: str
    kernel_release: str | None
    efi: bool | None
    firmware_vendor: str | None
    firmware_version: str | None
    product: str | None
    captured_at: datetime
    document: LedgerDoc


def latest_boots(conn: Connection, machine_id: str | None, n: int = 2,
                 running: str | None = None) -> list[StoredBoot]:
    """``n`` boots of ``machine_id`` with their ledger documents: the ``running`` boot
    (by boot id) first when it is stored, then the newest in the order the store first
    saw them (never by a capture's date, which a writer's clock sets). When that machine
    has none (or None is given), of the machine whose boot was stored last."""
    host_pk = None
    if machine_id is not None:
        host_pk = conn.execute(_HOST_BY_MACHINE, {"machine_id": machine_id,
                                                  "running": running or ""}).scalar_one_or_none()
    if host_pk is None:
        host_pk = conn.execute(_LAST_STORED_HOST).scalar_one_or_none()
    if host_pk is None:
        return []
    rows = conn.execute(_LATEST, {"host_pk": host_pk, "n": n, "running": running or ""}).all()
    return [StoredBoot(machine_id=r.machine_id, boot_id=r.boot_id, kernel_release=r.kernel_release,
                       efi=r.efi, firmware_vendor=r.firmware_vendor,
                       firmware_version=r.firmware_version, product=r.product,
                       captured_at=as_utc(r.captured_at), document=from_stored(r.document))
            for r in rows]


def running_and_previous(conn: Connection, machine_id: str | None,
                         running: str | None) -> tuple[StoredBoot | None, StoredBoot | None]:
    """The running boot (None when it is not stored yet) and the newest other boot of
    ``machine_id`` (:func:`latest_boots`). Without a running boot id, or for another
    machine's boots (``machine_id`` has none stored), the newest stored boot stands for it."""
    rows = latest_boots(conn, machine_id, 2, running)
    ours = bool(rows) and rows[0]["machine_id"] == machine_id
    if running is not None and ours and rows[0]["boot_id"] != running:
        return None, rows[0]
    return (rows[0] if rows else None), (rows[1] if len(rows) > 1 else None)


FLEET_COLUMNS = ("bs_total_bytes", "bs_reclaimed_bytes", "bs_kept_bytes", "bs_leaked_bytes",
                 "low_usable_bytes", "low_reserved_bytes", "low_boot_services_bytes",
                 "low_freed_bytes", "anomaly_count")


@dataclass(frozen=True, slots=True)
class FleetGroup:
    """The stored boots of one (kernel release, firmware vendor and version): their hosts,
    why each may not measure some figures (ledger/measures.py, the rule compare follows),
    and each headline column's values (None where unknown), all in one order."""

    kernel_release: str
    firmware_vendor: str
    firmware_version: str
    host_ids: tuple[int, ...]
    whys: tuple[tuple[str, ...], ...]
    columns: dict[str, tuple[Any, ...]]


def fleet_rows(engine: Engine, since: datetime | None = None) -> list[FleetGroup]:
    """Every stored boot's headline ledger columns (only the boots captured at or after
    ``since``, when given), grouped by release and firmware (the database sorts; each
    group is transposed into columns at C speed)."""
    release = func.coalesce(boots.c.kernel_release, "")
    vendor = func.coalesce(boots.c.firmware_vendor, "")
    firmware = func.coalesce(boots.c.firmware_version, "")
    q = (select(release, vendor, firmware, boots.c.host_id, boots.c.efi, boots.c.efi_debug,
                boots.c.kexec, boots.c.log_complete, *(ledgers.c[c] for c in FLEET_COLUMNS))
         .join(ledgers, ledgers.c.boot_pk == boots.c.id)
         .order_by(release, vendor, firmware))
    if since is not None:
        q = q.where(boots.c.captured_at >= as_utc(since))
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    memo: dict[tuple[Any, ...], tuple[str, ...]] = {}
    out = []
    for (rel, ven, fw), group in groupby(rows, key=lambda r: (r[0], r[1], r[2])):
        cols = list(zip(*group, strict=True))
        whys = []
        for state in zip(*cols[4:8], strict=True):
            if state not in memo:
                memo[state] = reasons(*state)
            whys.append(memo[state])
        out.append(FleetGroup(rel, ven, fw, cols[3], tuple(whys),
                              dict(zip(FLEET_COLUMNS, cols[8:], strict=True))))
    return out
