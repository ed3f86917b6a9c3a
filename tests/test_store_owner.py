"""The schema has one owner, and a store that is down or newer stops no daemon.

A fleet daemon (or `memledger db upgrade`) migrates a shared PostgreSQL; a host daemon
never does. A daemon whose store is down, behind or newer at start stays up, serves
/metrics with memledger_store_up 0 and the reason, keeps the spool waiting, and takes up
the work once the store is back (each test ends with the oracle: the boots stored)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from capturegen import boot_id, make_capture
from daemonrun import Daemon, drop, wait_for
from memledger.store.db import make_engine, resolve_url
from memledger.store.migrate import HEAD, current_revision, downgrade, upgrade
from memledger.store.schema import boots
from pgserver import PgServer
from sqlalchemy import func, select, text

# Real servers and daemons (PostgreSQL, memledger as a subprocess).
pytestmark = pytest.mark.slow

BOOT = "6.1.0-47-amd64-default"


def _stored(db: str) -> set[str]:
    eng = make_engine(resolve_url(db))
    try:
        with eng.connect() as conn:
            return set(conn.execute(select(boots.c.boot_id)).scalars())
    finally:
        eng.dispose()


def _with_one_waiting(tmp: Path, db: str, *args: str) -> Daemon:
    """A daemon on ``db`` whose spool holds one capture (boot 0 of host 1) at its start."""
    spool = tmp / "spool"
    spool.mkdir()
    drop(spool, "a.capture", make_capture(BOOT, 1, 0))
    return Daemon(tmp, db, spool, *args)


def _reason(d: Daemon) -> str:
    for line in d.get("/metrics")[2].splitlines():
        if line.startswith("memledger_store_down_reason{") and line.endswith(" 1.0"):
            return line.split('"')[1]
    return ""


def test_a_daemon_whose_store_is_newer_stays_up_and_resumes(tmp_path: Path) -> None:
    """A later memledger migrated the store: this daemon says so and leaves the spool
    alone; once the store is this memledger's schema again, it stores what waited."""
    db = str(tmp_path / "m.db")
    eng = make_engine(resolve_url(db))
    upgrade(eng)
    with eng.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    d = _with_one_waiting(tmp_path, db)
    try:
        wait_for("store_up 0", lambda: d.metric("memledger_store_up") == 0, 30)
        assert _reason(d) == "schema_newer"
        assert (tmp_path / "spool" / "a.capture").exists()  # waiting, not refused
        assert "newer than this memledger" in d.text()
        assert current_revision(eng) == "9999"
        with eng.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :h"), {"h": HEAD})
        wait_for("the waiting capture stored", lambda: boot_id(1, 0) in _stored(db), 90)
        assert d.metric("memledger_store_up") == 1
    finally:
        assert d.stop() == 0
        eng.dispose()


def test_a_host_daemon_never_migrates_a_shared_store_and_a_fleet_daemon_does(
        tmp_path: Path, pg_server: PgServer) -> None:
    url = pg_server.new_database()
    eng = make_engine(resolve_url(url))
    upgrade(eng)
    downgrade(eng, "0006")
    host = _with_one_waiting(tmp_path, url)
    try:
        wait_for("store_up 0", lambda: host.metric("memledger_store_up") == 0, 30)
        assert _reason(host) == "schema_behind"
        assert current_revision(eng) == "0006"
        assert "memledger db upgrade" in host.text()
        fleet = Daemon(tmp_path, url, tmp_path / "fleet-spool", "--fleet")
        try:
            wait_for("the fleet daemon to migrate", lambda: current_revision(eng) == HEAD, 30)
        finally:
            assert fleet.stop() == 0
        wait_for("the host daemon to store", lambda: boot_id(1, 0) in _stored(url), 90)
        assert host.metric("memledger_store_up") == 1
    finally:
        assert host.stop() == 0
        eng.dispose()


def test_a_daemon_started_while_postgresql_is_down_stays_up_until_it_is_back(
        tmp_path: Path) -> None:
    """It exited 1 in 0.6 s, and under Restart=on-failure every host knocked every 5 s."""
    server = PgServer()
    server.start()
    try:
        url = server.new_database()
        eng = make_engine(resolve_url(url))
        upgrade(eng)
        eng.dispose()
        server.pause()
        d = _with_one_waiting(tmp_path, url, "--fleet")
        try:
            wait_for("store_up 0", lambda: d.metric("memledger_store_up") == 0, 30)
            assert _reason(d) == "unreachable"
            assert d.proc.poll() is None
            server.resume()
            wait_for("the waiting capture stored", lambda: boot_id(1, 0) in _stored(url), 90)
            wait_for("store_up 1", lambda: d.metric("memledger_store_up") == 1, 30)
        finally:
            assert d.stop() == 0
    finally:
        server.stop()


@pytest.mark.parametrize("state", ["behind", "newer"])
def test_schema_state_says_how_the_store_stands(tmp_path: Path, state: str) -> None:
    from memledger.store.migrate import schema_state

    eng = make_engine(resolve_url(str(tmp_path / "m.db")))
    assert schema_state(eng) == "empty"
    upgrade(eng)
    assert schema_state(eng) == "current"
    if state == "behind":
        downgrade(eng, "0005")
    else:
        with eng.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0042'"))
    assert schema_state(eng) == state
    with eng.connect() as conn:
        assert conn.execute(select(func.count()).select_from(boots)).scalar_one() == 0


def test_commands_leave_a_shared_schema_to_its_owner(tmp_path: Path, pg_server: PgServer) -> None:
    """boots, compare and ingest against a PostgreSQL store of an older schema stop with
    one line naming `memledger db upgrade`, and leave it as it was; `db upgrade` migrates."""
    from conftest import run_cli

    url = pg_server.new_database()
    eng = make_engine(resolve_url(url))
    upgrade(eng)
    downgrade(eng, "0006")
    cap = tmp_path / "a.capture"
    cap.write_bytes(make_capture(BOOT, 1, 0))
    for args in (("boots",), ("compare", "--baseline", "6.1*", "--candidate", "6.12*"),
                 ("ingest", str(cap))):
        res = run_cli(*args, "--db", url)
        assert res.returncode == 2, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "memledger db upgrade" in res.stderr
    assert current_revision(eng) == "0006"
    assert run_cli("db", "upgrade", "--db", url).returncode == 0
    assert current_revision(eng) == HEAD
    eng.dispose()


def test_a_newer_schema_is_read_with_a_warning_and_never_written(tmp_path: Path) -> None:
    from conftest import run_cli

    db = str(tmp_path / "m.db")
    cap = tmp_path / "a.capture"
    cap.write_bytes(make_capture(BOOT, 1, 0))
    assert run_cli("ingest", "--db", db, str(cap)).returncode == 0
    eng = make_engine(resolve_url(db))
    with eng.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    eng.dispose()
    res = run_cli("boots", "--json", "--db", db)
    assert res.returncode == 0, res.stderr
    assert [b["boot_id"] for b in json.loads(res.stdout)] == [boot_id(1, 0)]
    assert "newer than this memledger" in res.stderr
    cap.write_bytes(make_capture(BOOT, 1, 1))
    res = run_cli("ingest", "--db", db, str(cap))
    assert res.returncode == 2 and "upgrade memledger" in res.stderr
    assert _stored(db) == {boot_id(1, 0)}
