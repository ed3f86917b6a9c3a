"""The store, on a real SQLite file and a real PostgreSQL server alike.

Oracles: the figures the kernel printed (``efi: Freeing EFI boot services memory``), line
counts of the raw logs taken with plain regular expressions, and ``memledger analyze``
of the same capture file.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import re
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from capturegen import BOOT_NAMES, BOOTS, T0, boot_id, machine_id, make_capture
from conftest import kernel_efi_freed_bytes, run_cli
from memledger.store.db import default_db_path, make_engine, resolve_url
from memledger.store.ingest import ingest_bytes, ingest_many, prepare, reprocess
from memledger.store.migrate import HEAD, current_revision, downgrade, head_revision, upgrade
from memledger.store.queries import boot_ledger, count_rows
from memledger.store.schema import (
    boots,
    captures,
    events,
    hosts,
    ledger_documents,
    ledgers,
    metadata,
)
from sqlalchemy import Engine, String, Text, func, select, text, update

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

MEMBLOCK_RANGE = re.compile(r"\] _{0,2}memblock_\w+: \[0x[0-9a-f]+-0x[0-9a-f]+\]")
FREEING = re.compile(r"Freeing .+ memory: \d+K")


def _utc(when: datetime) -> datetime:
    """SQLite returns naive UTC datetimes, PostgreSQL aware ones."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def engine_for(url: str) -> Engine:
    engine = make_engine(resolve_url(url))
    upgrade(engine)
    return engine


@pytest.fixture
def engine(db_url: str) -> Any:
    eng = engine_for(db_url)
    yield eng
    eng.dispose()


def _types_differ(context: Any, inspected_column: Any, metadata_column: Any,
                  inspected_type: Any, metadata_type: Any) -> bool | None:
    """SQLite keeps no VARCHAR length (every one is TEXT affinity, never enforced), so
    migration 0005 widens columns on PostgreSQL only; elsewhere Alembic compares."""
    if context.dialect.name == "sqlite" and isinstance(inspected_type, String) \
            and isinstance(metadata_type, String):
        return isinstance(inspected_type, Text) != isinstance(metadata_type, Text)
    return None


def test_schema_is_at_head_and_matches_the_migrations(engine: Engine) -> None:
    assert current_revision(engine) == head_revision() == HEAD == "0008"
    upgrade(engine)  # a second run is a no-op
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(
            conn, opts={"compare_type": _types_differ}), metadata)
    assert diff == []


def test_0003_moves_each_ledger_document_to_its_own_table(db_url: str) -> None:
    eng = make_engine(resolve_url(db_url))
    upgrade(eng, "0002")
    doc = {"schema_version": 1, "efi_boot_services": {"reclaimed_bytes": 48037888}}
    with eng.begin() as conn:
        conn.execute(text("INSERT INTO hosts (id, machine_id, first_seen, last_seen) "
                          "VALUES (1, :m, :t, :t)"), {"m": "a" * 32, "t": T0})
        conn.execute(text("INSERT INTO boots (id, host_id, boot_id) VALUES (7, 1, 'b')"))
        conn.execute(text("INSERT INTO ledgers (boot_pk, schema_version, computed_with, "
                          "computed_at, anomaly_count, document) VALUES (7, 1, 'x', :t, 0, :d)"),
                     {"t": T0, "d": json.dumps(doc)})
    upgrade(eng)
    with eng.connect() as conn:
        assert conn.execute(select(ledger_documents.c.boot_pk, ledger_documents.c.document)
                            ).all() == [(7, doc)]
        assert conn.execute(select(ledgers.c.boot_pk, ledgers.c.anomaly_count)).all() == [(7, 0)]
    eng.dispose()


def test_0004_fills_what_each_boot_measures_from_its_document(db_url: str) -> None:
    """A store written before 0004: its boots gain efi_debug, kexec, log_complete, their
    anomaly codes and memory size, and one vendor name, all from their ledger documents
    (the oracles: the kernel's own cmdline, DMI strings and zoneinfo of the same fixture
    boots, and the columns ingest wrote before the downgrade)."""
    eng = make_engine(resolve_url(db_url))
    upgrade(eng)
    names = ["6.1.0-47-amd64-efidebug", "6.1.0-47-amd64-default", "6.1.0-47-amd64-seabios"]
    for i, name in enumerate(names):
        ingest_bytes(eng, make_capture(name, i, 1), "t")
    with eng.connect() as conn:  # what ingest wrote: the backfill must write the same
        written = conn.execute(select(boots.c.boot_id, ledgers.c.anomaly_codes)
                               .join(ledgers, ledgers.c.boot_pk == boots.c.id)).all()
    with eng.begin() as conn:  # back to what an 0003 store held
        conn.execute(update(boots).values(firmware_vendor="EFI Development Kit II / OVMF"))
    downgrade(eng, "0003")
    assert current_revision(eng) == "0003"
    upgrade(eng)
    with eng.connect() as conn:
        got = {r.boot_id: r for r in conn.execute(
            select(boots.c.boot_id, boots.c.efi_debug, boots.c.kexec, boots.c.log_complete,
                   boots.c.firmware_vendor, ledgers.c.anomaly_codes, ledgers.c.memory_bytes)
            .join(ledgers, ledgers.c.boot_pk == boots.c.id))}
    eng.dispose()
    for i, name in enumerate(names):
        root = BOOTS / name / "root"
        row = got[boot_id(i, 1)]
        assert row.efi_debug == ("efi=debug" in (root / "proc/cmdline").read_text())
        assert row.kexec is None  # the lab's captures have no boot_params
        assert row.log_complete is True
        dmi_vendor = (root / "sys/class/dmi/id/bios_vendor").read_text().strip()
        assert row.firmware_vendor == ("SeaBIOS" if dmi_vendor == "SeaBIOS" else "EDK II"), dmi_vendor
        present = sum(int(m) for m in re.findall(r"present\s+(\d+)", (root / "proc/zoneinfo").read_text()))
        assert row.memory_bytes == present * 4096
    assert {(b, got[b].anomaly_codes) for b, _ in written} == set(written)
    assert dict(written)[boot_id(0, 1)] == "efi_debug_set"  # the efi=debug boot

def test_sqlite_connections_get_the_daemon_pragmas(tmp_path: Path) -> None:
    eng = engine_for(str(tmp_path / "x.db"))
    with eng.connect() as conn:
        got = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
               for p in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")}
    assert got == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 30000,
                   "foreign_keys": 1}


def test_a_new_store_opened_while_another_writer_holds_it_waits_for_it(tmp_path: Path) -> None:
    """The first writers of a new store race: one still in rollback mode holds the write
    lock while the other switches the file to WAL. SQLite answers that switch "database is
    locked" at once, without the busy timeout; the connection waits instead, and gets WAL."""
    path = tmp_path / "x.db"
    first = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    first.execute("CREATE TABLE t (x)")
    first.execute("BEGIN IMMEDIATE")
    first.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.5, first.execute, ("COMMIT",))
    release.start()
    try:
        with engine_for(str(path)).connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            rows = conn.exec_driver_sql("SELECT count(*) FROM t").scalar()
    finally:
        release.join()
        first.close()
    assert (mode, rows) == ("wal", 1)


def test_default_database_location() -> None:
    assert default_db_path({"STATE_DIRECTORY": "/var/lib/memledger:/x"}, 0) == \
        Path("/var/lib/memledger/memledger.db")
    assert default_db_path({}, 0) == Path("/var/lib/memledger/memledger.db")
    assert default_db_path({"XDG_STATE_HOME": "/home/u/.st"}, 1000) == \
        Path("/home/u/.st/memledger/memledger.db")
    assert default_db_path({"HOME": "/home/u"}, 1000) == \
        Path("/home/u/.local/state/memledger/memledger.db")


def test_ingest_is_idempotent_and_newer_captures_replace(engine: Engine) -> None:
    name = "6.1.0-47-amd64-memblock"
    first = make_capture(name, 1, 1, minutes=10)
    assert ingest_bytes(engine, first, "t").status == "new"
    assert ingest_bytes(engine, first, "t").status == "duplicate"
    assert ingest_bytes(engine, make_capture(name, 1, 1, minutes=5), "t").status == "older"
    newer = make_capture("6.1.0-47-amd64-default", 1, 1, minutes=20)
    assert ingest_bytes(engine, newer, "t").status == "replaced"
    rows = count_rows(engine)
    assert (rows["hosts"], rows["boots"], rows["captures"], rows["ledgers"]) == (1, 1, 1, 1)
    with engine.connect() as conn:
        cap = conn.execute(select(captures.c.data, captures.c.captured_at)).one()
        n_memblock = conn.execute(select(func.count()).select_from(events)
                                  .where(events.c.source == "memblock")).scalar_one()
    assert bytes(cap.data) == newer
    # The replacing capture is the default boot, which has no memblock=debug lines.
    assert n_memblock == 0
    assert _utc(cap.captured_at) == T0 + timedelta(minutes=20)


@pytest.mark.parametrize("name", BOOT_NAMES)
def test_stored_boot_agrees_with_the_kernel_and_with_analyze(engine: Engine, name: str,
                                                             tmp_path: Path) -> None:
    data = make_capture(name, 7, 3)
    ingest_bytes(engine, data, "t")
    dmesg = (BOOTS / name / "root" / "dmesg.txt").read_text()
    with engine.connect() as conn:
        led = conn.execute(select(ledgers)).one()
        boot = conn.execute(select(boots)).one()
        by_source = dict(conn.execute(select(events.c.source, func.count())
                                      .group_by(events.c.source)).all())
    kernel = kernel_efi_freed_bytes(dmesg)
    if kernel is not None:
        assert led.bs_reclaimed_bytes == kernel
    assert by_source.get("memblock", 0) == len(MEMBLOCK_RANGE.findall(dmesg))
    assert by_source.get("freeing", 0) == len(FREEING.findall(dmesg))
    release = (BOOTS / name / "root/proc/sys/kernel/osrelease").read_text().strip()
    assert boot.kernel_release == release
    assert boot.boot_id == boot_id(7, 3)

    path = tmp_path / "c.tar.gz"
    path.write_bytes(data)
    proc = run_cli("analyze", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    analyzed = json.loads(proc.stdout)
    stored = boot_ledger(engine, machine_id(7), boot_id(7, 3))
    assert stored is not None
    for doc in (analyzed, stored):
        doc["boot"].pop("source")
    assert stored == analyzed


def test_reprocess_rebuilds_identical_ledgers(engine: Engine) -> None:
    # Boots whose reclaimed figure is known (the kernel printed it), so damage shows.
    printed = [n for n in BOOT_NAMES if n.startswith("6.") and not n.endswith(("-seabios", "-efidebug"))]
    for i, name in enumerate(printed[:6]):
        ingest_bytes(engine, make_capture(name, i, 0), "t")
    with engine.connect() as conn:
        before = dict(conn.execute(select(ledger_documents.c.boot_pk,
                                          ledger_documents.c.document)).all())
        n_events = conn.execute(select(func.count()).select_from(events)).scalar_one()
    report = reprocess(engine, "t")
    assert (report.boots, report.changed, report.failed) == (6, 0, [])
    # Damage one ledger and its events; reprocess must rebuild them from the raw capture.
    victim = min(before)
    with engine.begin() as conn:
        conn.execute(update(ledgers).where(ledgers.c.boot_pk == victim)
                     .values(bs_reclaimed_bytes=None))
        conn.execute(update(ledger_documents).where(ledger_documents.c.boot_pk == victim)
                     .values(document={}))
        conn.execute(events.delete().where(events.c.boot_pk == victim))
    report = reprocess(engine, "t")
    assert (report.boots, report.changed) == (6, 1)
    with engine.connect() as conn:
        after = dict(conn.execute(select(ledger_documents.c.boot_pk,
                                         ledger_documents.c.document)).all())
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == n_events
        assert conn.execute(select(ledgers.c.bs_reclaimed_bytes)
                            .where(ledgers.c.boot_pk == victim)).scalar_one() is not None
    assert after == before


def test_a_batch_decides_each_capture_as_if_it_came_alone(engine: Engine) -> None:
    """One transaction, eight captures: repeats and versions of one boot among others."""
    a10, a20, a5 = (make_capture("6.1.0-47-amd64-default", 1, 1, m) for m in (10, 20, 5))
    b = make_capture("6.12.117+deb12-amd64-memblock", 1, 2, 10)
    c = make_capture("6.1.0-47-amd64-crashkernel", 2, 1, 10)
    assert ingest_bytes(engine, c, "before").status == "new"
    c30 = make_capture("6.1.0-47-amd64-crashkernel", 2, 1, 30)
    batch = [a10, a10, b, a5, a20, c, c30, a10]
    results = ingest_many(engine, [(prepare(d, "t"), f"f{i}") for i, d in enumerate(batch)])
    assert [r.status for r in results] == ["new", "duplicate", "new", "older", "replaced",
                                           "duplicate", "replaced", "older"]
    rows = count_rows(engine)
    assert (rows["hosts"], rows["boots"], rows["captures"], rows["ledgers"]) == (2, 3, 3, 3)
    with engine.connect() as conn:
        stored = {bytes(r.data) for r in conn.execute(select(captures.c.data))}
        origins = {r.origin for r in conn.execute(select(captures.c.origin))}
        n_memblock = conn.execute(select(func.count()).select_from(events)
                                  .where(events.c.source == "memblock")).scalar_one()
    assert stored == {a20, b, c30} and origins == {"f4", "f2", "f6"}
    # Only b (a memblock=debug boot) has memblock events; one copy of them.
    assert n_memblock == len(MEMBLOCK_RANGE.findall(
        (BOOTS / "6.12.117+deb12-amd64-memblock" / "root" / "dmesg.txt").read_text()))


def test_a_batch_of_many_senders_keeps_each_capture_under_its_own(engine: Engine) -> None:
    """A fleet daemon's batch: what two hosts sent, one of them claiming the other's boot,
    and a local file. Each capture is its sender's: the claimed boot is a second host's,
    and each sender's repeat is its own duplicate."""
    a, b = make_capture("6.1.0-47-amd64-default", 1, 1), make_capture("6.1.0-56-amd64-default", 2, 1)
    a2, b2 = make_capture("6.1.0-47-amd64-default", 1, 1, 5), make_capture("6.1.0-56-amd64-default", 2, 1, 5)
    batch = [(a, "certificate:h1"), (b, "certificate:h2"), (a2, "certificate:h2"),
             (a, "certificate:h1"), (b2, "")]
    results = ingest_many(engine, [(prepare(d, "t"), f"f{i}") for i, (d, _) in enumerate(batch)],
                          senders=[s for _, s in batch])
    assert [r.status for r in results] == ["new", "new", "new", "duplicate", "new"]
    with engine.connect() as conn:
        rows = sorted((r.sender, r.machine_id, r.boot_id) for r in conn.execute(
            select(hosts.c.sender, hosts.c.machine_id, boots.c.boot_id)
            .join(hosts, hosts.c.id == boots.c.host_id)))
    assert rows == sorted([("certificate:h1", machine_id(1), boot_id(1, 1)),
                           ("certificate:h2", machine_id(2), boot_id(2, 1)),
                           ("certificate:h2", machine_id(1), boot_id(1, 1)),
                           ("", machine_id(2), boot_id(2, 1))])
    with pytest.raises(ValueError, match="2 senders for 1 captures"):
        ingest_many(engine, [(prepare(a, "t"), "x")], senders=["", ""])


def _writer(url: str, jobs: list[tuple[str, int, int, int]], seed: int,
            batch: int) -> dict[str, int]:
    eng = make_engine(resolve_url(url))
    upgrade(eng)
    order = list(jobs)
    random.Random(seed).shuffle(order)
    out: dict[str, int] = {}
    for i in range(0, len(order), batch):
        items = [(prepare(make_capture(name, host, boot, minutes), "t"), "t")
                 for name, host, boot, minutes in order[i:i + batch]]
        for r in ingest_many(eng, items):
            out[r.status] = out.get(r.status, 0) + 1
    eng.dispose()
    return out


@pytest.mark.parametrize("batch", [1, 7])
def test_concurrent_writers_lose_and_double_nothing(db_url: str, batch: int) -> None:
    """Four processes ingest the same 30 boots (each in two versions) in different orders,
    one capture or seven per transaction: every boot is stored once, holding its newest
    capture."""
    jobs = [(BOOT_NAMES[(h * 5 + b) % len(BOOT_NAMES)], h, b, m)
            for h in range(6) for b in range(5) for m in (1, 2)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_writer, [(db_url, jobs, seed, batch) for seed in range(4)])
    eng = make_engine(resolve_url(db_url))
    with eng.connect() as conn:
        stored = conn.execute(select(hosts.c.machine_id, boots.c.boot_id, boots.c.captured_at)
                              .join(hosts, hosts.c.id == boots.c.host_id)).all()
        n_captures = conn.execute(select(func.count()).select_from(captures)).scalar_one()
        n_ledgers = conn.execute(select(func.count()).select_from(ledgers)).scalar_one()
        if eng.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    eng.dispose()
    expected = {(machine_id(h), boot_id(h, b)) for h in range(6) for b in range(5)}
    assert {(r.machine_id, r.boot_id) for r in stored} == expected
    assert len(stored) == n_captures == n_ledgers == 30
    assert all(_utc(r.captured_at) == T0 + timedelta(minutes=2) for r in stored)
    # Exactly one writer created each boot; every other ingest of it found it stored.
    assert sum(r.get("new", 0) for r in results) == 30


def test_boots_command_lists_what_was_stored(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    eng = engine_for(str(db))
    ingest_bytes(eng, make_capture("6.12.117+deb12-amd64-default", 3, 9), "t")
    eng.dispose()
    proc = run_cli("boots", "--db", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    dmesg = (BOOTS / "6.12.117+deb12-amd64-default/root/dmesg.txt").read_text()
    assert row["boot_id"] == boot_id(3, 9)
    assert row["hostname"] == "host-3"
    assert row["efi_boot_services"]["reclaimed_bytes"] == kernel_efi_freed_bytes(dmesg)
    table = run_cli("boots", "--db", str(db))
    assert table.returncode == 0 and "host-3" in table.stdout


def test_read_commands_need_an_existing_database(tmp_path: Path) -> None:
    for cmd in ("boots", "reprocess"):
        proc = run_cli(cmd, "--db", str(tmp_path / "none.db"))
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "no memledger database here" in proc.stderr
    proc = run_cli("boots", "--db", "postgresql+psycopg://u@127.0.0.1:1/x")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
