"""Clones of one disk image share /etc/machine-id: they are two hosts all the same, told
apart by who sent their captures to a fleet daemon and by their DMI product UUID and
serial, and both are flagged. A sender never adds to or changes another sender's host."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from capturegen import boot_id, machine_id, make_capture
from conftest import run_cli
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import ingest_bytes
from memledger.store.migrate import downgrade, upgrade
from memledger.store.queries import list_boots
from memledger.store.runtime import store_batch
from memledger.store.schema import boots, hosts, runtime_batches
from memledger.tracer.runtime import BatchHeader, parse_batch, render_batch
from sqlalchemy import Engine, func, select

# Real servers and daemons (PostgreSQL, memledger as a subprocess).
pytestmark = pytest.mark.slow

BOOT = "6.1.0-47-amd64-default"
OTHER = "6.1.0-56-amd64-default"
UUID = "sys/class/dmi/id/product_uuid"
SERIAL = "sys/class/dmi/id/product_serial"
SHARED = machine_id(0)  # the image's machine id, on every clone


def _hw(uuid: str, serial: str = "") -> dict[str, bytes]:
    return {UUID: f"{uuid}\n".encode(), **({SERIAL: f"{serial}\n".encode()} if serial else {})}


@pytest.fixture
def engine(db_url: str) -> Engine:
    eng = make_engine(resolve_url(db_url))
    upgrade(eng)
    return eng


def _hosts(engine: Engine) -> list[tuple[str, str | None, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(hosts.c.machine_id, hosts.c.hostname, hosts.c.sender).order_by(hosts.c.id))]


def _boots_of(engine: Engine) -> dict[str, str | None]:
    """boot id → the name of the host it is stored under."""
    with engine.connect() as conn:
        return {r.boot_id: r.hostname for r in conn.execute(
            select(boots.c.boot_id, hosts.c.hostname).join(hosts, hosts.c.id == boots.c.host_id))}


def test_clones_told_apart_by_hardware_are_two_hosts_both_flagged(engine: Engine,
                                                                  tmp_path: Path) -> None:
    """Two machines cloned from one image, each captured as root (which reads the DMI
    product UUID): two hosts, each keeping its own boots and its own name, both flagged."""
    a = [make_capture(BOOT, 1, b, b, machine=SHARED, hostname="web-a", extra=_hw("4c4c4544-aa"))
         for b in range(2)]
    b = [make_capture(OTHER, 2, b, b, machine=SHARED, hostname="web-b",
                      extra=_hw("4c4c4544-bb", "SN-B")) for b in range(2)]
    for data in (a[0], b[0], a[1], b[1]):  # interleaved, as two hosts booting would be
        assert ingest_bytes(engine, data, "t").status == "new"
    assert sorted(_hosts(engine)) == [(SHARED, "web-a", ""), (SHARED, "web-b", "")]
    assert _boots_of(engine) == {boot_id(1, 0): "web-a", boot_id(1, 1): "web-a",
                                 boot_id(2, 0): "web-b", boot_id(2, 1): "web-b"}
    rows = list_boots(engine)
    assert {r["hostname"] for r in rows} == {"web-a", "web-b"}
    assert all(r["shared_machine_id"] for r in rows)
    assert all(any("machine id" in n for n in r["notes"]) for r in rows)


def test_a_capture_that_cannot_read_the_hardware_joins_its_one_host(engine: Engine) -> None:
    """The daemon captures as its own user (no product UUID), a root capture of the same
    machine shows it: one host, not two, and not flagged."""
    assert ingest_bytes(engine, make_capture(BOOT, 1, 0), "t").status == "new"
    assert ingest_bytes(engine, make_capture(BOOT, 1, 1, 1, extra=_hw("4c4c4544-aa")),
                        "t").status == "new"
    assert ingest_bytes(engine, make_capture(BOOT, 1, 2, 2), "t").status == "new"
    assert len(_hosts(engine)) == 1
    assert not any(r["shared_machine_id"] for r in list_boots(engine))


def test_placeholder_uuids_tell_no_machine_apart(engine: Engine) -> None:
    """Firmware that never set a UUID reports zeros (or an AMI placeholder): two such
    captures of one machine stay one host."""
    for b, uuid in enumerate(("00000000-0000-0000-0000-000000000000",
                              "03000200-0400-0500-0006-000700080009", "Not Settable")):
        ingest_bytes(engine, make_capture(BOOT, 1, b, b, extra=_hw(uuid)), "t")
    assert len(_hosts(engine)) == 1


def test_senders_own_their_hosts_and_a_forgery_touches_no_other(engine: Engine) -> None:
    """Two senders (clones, by their certificates) with one machine id are two hosts. A
    capture sent by B that claims A's machine id and the very boot id of A's boot lands on
    B's host: A's boot keeps its capture, ledger and name."""
    a0 = make_capture(BOOT, 1, 0, machine=SHARED, hostname="web-a")
    assert ingest_bytes(engine, a0, "t", sender="certificate:web-a").status == "new"
    with engine.connect() as conn:
        before = conn.execute(select(boots.c.capture_id, boots.c.kernel_release)
                              .where(boots.c.boot_id == boot_id(1, 0))).one()
    forged = make_capture(OTHER, 1, 0, 60, machine=SHARED, hostname="forged")
    assert ingest_bytes(engine, forged, "t", sender="certificate:web-b").status == "new"
    b0 = make_capture(BOOT, 2, 0, machine=SHARED, hostname="web-b")
    assert ingest_bytes(engine, b0, "t", sender="certificate:web-b").status == "new"
    with engine.connect() as conn:
        a_rows = conn.execute(select(boots.c.capture_id, boots.c.kernel_release, hosts.c.hostname)
                              .join(hosts, hosts.c.id == boots.c.host_id)
                              .where(hosts.c.sender == "certificate:web-a")).all()
        n_hosts = conn.execute(select(func.count()).select_from(hosts)).scalar_one()
    assert [(r.capture_id, r.kernel_release) for r in a_rows] == [tuple(before)]
    assert [r.hostname for r in a_rows] == ["web-a"]
    assert n_hosts == 2
    # Replaying A's exact capture as B stores nothing under A (the capture is A's).
    # (B's host holds the forged, later capture of that boot id: this one is "older".)
    assert ingest_bytes(engine, a0, "t", sender="certificate:web-b").status == "older"
    with engine.connect() as conn:
        assert conn.execute(select(boots.c.capture_id).join(hosts, hosts.c.id == boots.c.host_id)
                            .where(hosts.c.sender == "certificate:web-a")).scalars().all() == \
            [before.capture_id]


def test_event_batches_follow_their_sender(engine: Engine) -> None:
    """A batch is stored for the host its sender owns, never another sender's."""
    ingest_bytes(engine, make_capture(BOOT, 1, 0, machine=SHARED), "t", sender="user:a")
    head = BatchHeader(SHARED, boot_id(1, 0), "kmsg", "t", datetime(2026, 1, 1, tzinfo=UTC))
    data = render_batch(head, [])
    store_batch(engine, parse_batch(data), hashlib.sha256(data).hexdigest(), sender="user:b")
    with engine.connect() as conn:
        owner = conn.execute(select(hosts.c.sender).join(
            runtime_batches, runtime_batches.c.host_id == hosts.c.id)).scalar_one()
    assert owner == "user:b"
    assert sorted(s for _, _, s in _hosts(engine)) == ["user:a", "user:b"]


def test_compare_pairs_clones_as_two_hosts(tmp_path: Path) -> None:
    """compare counts and pairs each clone on its own: 2 hosts, not 1."""
    db = tmp_path / "m.db"
    files = []
    for host, uuid in ((1, "uuid-a"), (2, "uuid-b")):
        for b, name in enumerate((BOOT, OTHER)):
            p = tmp_path / f"{host}-{b}.capture"
            p.write_bytes(make_capture(name, host, b, b, machine=SHARED, extra=_hw(uuid)))
            files.append(str(p))
    assert run_cli("ingest", "--db", str(db), *files).returncode == 0
    res = run_cli("compare", "--db", str(db), "--baseline", "6.1.0-47-amd64",
                  "--candidate", "6.1.0-56-amd64", "--format", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["baseline"]["hosts"] == out["candidate"]["hosts"] == 2
    assert len(out["pairs"]) == 2


def test_0007_keeps_every_boot_and_batch(db_url: str) -> None:
    """0007 copies the hosts table on SQLite; with foreign keys on, dropping the old copy
    would delete every boot (ON DELETE CASCADE). Down to 0006 and up again keeps them."""
    eng = make_engine(resolve_url(db_url))
    upgrade(eng)
    for h in range(3):
        ingest_bytes(eng, make_capture(BOOT, h, 0), "t")
    downgrade(eng, "0006")
    upgrade(eng)
    with eng.connect() as conn:
        assert conn.execute(select(func.count()).select_from(boots)).scalar_one() == 3
        assert conn.execute(select(func.count()).select_from(hosts)).scalar_one() == 3
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as raw:
            assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
