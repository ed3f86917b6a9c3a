"""Clocks and stale captures (issue 28), SQLite and PostgreSQL.

A capture taken early in boot may read a real-time clock kept in local time, up to 14 h
ahead, and an old capture may be ingested again: neither may decide which boot is the
running one, which capture of a boot is the latest, or what a host is called.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from capturegen import BOOTS, boot_id, machine_id, make_capture
from daemonrun import Daemon, wait_for
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import ingest_bytes
from memledger.store.migrate import upgrade
from memledger.store.schema import boots, hosts
from sqlalchemy import Engine, select

OLD, NEW = "5.10.0-32-amd64-default", "6.1.0-47-amd64-default"


def _release(name: str) -> str:
    return (BOOTS / name / "root/proc/sys/kernel/osrelease").read_text().strip()


@pytest.fixture
def engine(db_url: str) -> Engine:
    eng = make_engine(resolve_url(db_url))
    upgrade(eng)
    return eng


def _stored(engine: Engine, host: int) -> tuple[str | None, dict[str, str | None]]:
    """The host's name, and each of its boots' kernel release."""
    with engine.connect() as conn:
        name = conn.execute(select(hosts.c.hostname)
                            .where(hosts.c.machine_id == machine_id(host))).scalar_one()
        releases = {r.boot_id: r.kernel_release for r in conn.execute(
            select(boots.c.boot_id, boots.c.kernel_release).join(hosts)
            .where(hosts.c.machine_id == machine_id(host)))}
    return name, releases


def test_a_corrected_later_capture_replaces_one_dated_ahead(engine: Engine) -> None:
    now = datetime.now(UTC)
    # Taken 5 s into the boot by a clock 14 h ahead; then an hour in, by a right clock.
    early = make_capture(OLD, 1, 0, captured_at=now + timedelta(hours=14), uptime_s=5.0)
    later = make_capture(NEW, 1, 0, captured_at=now, uptime_s=3600.0)
    assert ingest_bytes(engine, early, "test").status == "new"
    assert ingest_bytes(engine, later, "test").status == "replaced"
    assert _stored(engine, 1)[1] == {boot_id(1, 0): _release(NEW)}
    # The early one again is older, whatever its date says.
    assert ingest_bytes(engine, early, "test").status == "older"


def test_an_uptime_no_clock_can_have_does_not_pin_a_boot(engine: Engine) -> None:
    now = datetime.now(UTC)
    # 31 years of uptime an hour ago: the two wall clocks put the boot's start decades
    # apart, so the uptimes are not believed and the later date wins.
    forged = make_capture(OLD, 2, 0, captured_at=now - timedelta(hours=1), uptime_s=1e9)
    later = make_capture(NEW, 2, 0, captured_at=now, uptime_s=3600.0)
    assert ingest_bytes(engine, forged, "test").status == "new"
    assert ingest_bytes(engine, later, "test").status == "replaced"
    assert _stored(engine, 2)[1] == {boot_id(2, 0): _release(NEW)}


def test_a_duplicate_or_a_capture_of_an_older_boot_never_renames_the_host(engine: Engine) -> None:
    first = make_capture(OLD, 3, 0, minutes=0, hostname="web-17-old")
    second = make_capture(NEW, 3, 1, minutes=60, hostname="web-17")
    assert ingest_bytes(engine, first, "test").status == "new"
    assert ingest_bytes(engine, second, "test").status == "new"
    assert _stored(engine, 3)[0] == "web-17"
    assert ingest_bytes(engine, first, "test").status == "duplicate"
    assert _stored(engine, 3)[0] == "web-17"
    # A later capture of the older boot replaces that boot, but it is not the newest boot.
    again = make_capture(OLD, 3, 0, minutes=30, hostname="web-17-old")
    assert ingest_bytes(engine, again, "test").status == "replaced"
    assert _stored(engine, 3)[0] == "web-17"
    # The newest boot renamed is the host renamed.
    renamed = make_capture(NEW, 3, 1, minutes=90, hostname="web-17b")
    assert ingest_bytes(engine, renamed, "test").status == "replaced"
    assert _stored(engine, 3)[0] == "web-17b"


def _landing_current(html: str) -> str:
    m = re.search(r"current boot</t[hd]>\s*<td>([^<]*)<", html)
    assert m, html[:2000]
    return m.group(1)


@pytest.mark.slow
def test_the_running_boot_is_current_whatever_the_previous_one_is_dated(
        db_url: str, tmp_path: Path) -> None:
    """The previous boot was captured by a clock 14 h ahead; the daemon of the running
    boot still calls the running boot current, on its landing page and in its metrics."""
    root = tmp_path / "root"
    shutil.copytree(BOOTS / NEW / "root", root)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/machine-id").write_text(machine_id(4) + "\n")
    (root / "proc/sys/kernel/random/boot_id").write_text(boot_id(4, 1) + "\n")
    engine = make_engine(resolve_url(db_url))
    upgrade(engine)
    ahead = make_capture(OLD, 4, 0, captured_at=datetime.now(UTC) + timedelta(hours=14))
    assert ingest_bytes(engine, ahead, "test").status == "new"
    engine.dispose()

    spool = tmp_path / "spool"
    spool.mkdir(mode=0o2770)
    d = Daemon(tmp_path, db_url, spool, "--root", str(root), capture_self=True)
    try:
        wait_for("this boot to be stored", lambda: "this boot: new" in d.text(), 60)
        assert _landing_current(d.get("/")[2]).startswith(boot_id(4, 1))
        metrics = d.get("/metrics")[2]
        assert f'kernel_release="{_release(NEW)}"' in re.search(
            r"^memledger_boot_info\{.*$", metrics, re.M)[0]
        assert f'kernel_release="{_release(OLD)}"' in re.search(
            r"^memledger_previous_boot_info\{.*$", metrics, re.M)[0]
    finally:
        assert d.stop() == 0
