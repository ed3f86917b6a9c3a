"""A full disk (issue 8): a real 6 MiB tmpfs holding the database and the spool, as
/var/lib/memledger holds both. Needs root (mount), as CI runs.

The daemon must say so in one clear line, leave the capture in the spool (not in
failed/: nothing is wrong with it), keep serving, and store it once space is back; the
database must pass ``PRAGMA integrity_check`` throughout. ``memledger ingest`` must
fail in one line with exit 1, and ``memledger capture -o`` must leave no partial file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from capturegen import BOOTS, boot_id, machine_id, make_capture
from conftest import run_cli
from daemonrun import Daemon, drop, wait_for
from test_daemon import spool_state, stored

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

CAPTURE = make_capture("6.12.117+deb12-amd64-memblock", 5, 5)  # the biggest ledger: 10⁴ events


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0750", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int = 0) -> Path:
    """Take every free block of ``mnt`` but ``leave`` bytes with one file; returns it."""
    reserve = mnt / "reserve"
    if leave:
        reserve.write_bytes(b"\0" * leave)
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * size)
    reserve.unlink(missing_ok=True)
    return filler


def _check_line(text: str) -> str:
    line = next(ln for ln in text.splitlines() if "stays in the spool" in ln)
    assert line.startswith("ERROR boot.tar.gz: database error (database or disk is full"), line
    assert "no space left on the file system of" in line, line
    return line


def test_the_disk_fills_under_a_running_daemon(small_fs: Path, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "CI runs as root; mount needs it"
    spool = small_fs / "spool"
    db = f"sqlite:///{small_fs / 'memledger.db'}"
    d = Daemon(tmp_path, db, spool)
    wait_for("the schema", lambda: d.metric("memledger_store_up") == 1, 30)
    # Room for the capture file, not for its ledger's 10⁴ events in the database.
    filler = _fill(small_fs, leave=len(CAPTURE) + 8192)
    drop(spool, "boot.tar.gz", CAPTURE)
    wait_for("the disk-full error", lambda: "stays in the spool" in d.text(), 60)
    _check_line(d.text())
    assert spool_state(spool) == (["boot.tar.gz"], [], [])  # kept for the retry, not failed
    assert d.metric("memledger_store_up") == 1  # still serving
    filler.unlink()  # (reading needs room too; the daemon retries only in 30 s or on HUP)
    assert stored(db) == (set(), 0, 0, 0)  # integrity_check inside; nothing half-written
    d.signal(signal.SIGHUP)
    wait_for("the retry", lambda: spool_state(spool)[1] == ["boot.tar.gz"], 60)
    assert d.stop() == 0
    assert "Traceback" not in d.text()
    assert stored(db) == ({(machine_id(5), boot_id(5, 5))}, 1, 1, 1)


def test_a_daemon_started_on_a_full_disk(small_fs: Path, tmp_path: Path) -> None:
    """SQLite cannot create its -wal file: the daemon stays up (it exited 1, and systemd
    restarted it every few seconds), says why once, keeps the capture waiting, and stores it
    once there is room."""
    spool = small_fs / "spool"
    db = f"sqlite:///{small_fs / 'memledger.db'}"
    d = Daemon(tmp_path, db, spool)  # the schema, while there is room
    assert d.stop() == 0
    drop(spool, "boot.tar.gz", CAPTURE)
    _fill(small_fs)
    d = Daemon(tmp_path, db, spool)
    wait_for("store_up 0", lambda: d.metric("memledger_store_up") == 0, 30)
    assert d.metric('memledger_store_down_reason{reason="unreachable"}') == 1
    assert spool_state(spool) == (["boot.tar.gz"], [], [])
    wal = small_fs / "memledger.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # so an immutable read sees it all
    with sqlite3.connect(f"file:{small_fs / 'memledger.db'}?immutable=1", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM boots").fetchone()[0] == 0
    (small_fs / "filler").unlink()
    wait_for("the capture stored", lambda: spool_state(spool)[0] == [], 90)
    assert d.stop() == 0
    said = [line for line in d.text().splitlines() if "no space left on the file system of" in line]
    assert len(said) == 1, said
    assert "Traceback" not in d.text()
    assert stored(db)[1] == 1


def test_ingest_on_a_full_disk_is_one_line_exit_1(small_fs: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{small_fs / 'memledger.db'}"
    seed = tmp_path / "first.tar.gz"
    seed.write_bytes(make_capture("6.12.117+deb12-amd64-default", 1, 1))
    assert run_cli("ingest", "--db", db, str(seed)).returncode == 0
    cap = tmp_path / "boot.tar.gz"
    cap.write_bytes(CAPTURE)
    _fill(small_fs)
    proc = run_cli("ingest", "--db", db, "-j", "1", str(cap))
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left on the file system of" in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert cap.read_bytes() == CAPTURE
    (small_fs / "filler").unlink()
    keys, n_boots, _, _ = stored(db)
    assert (keys, n_boots) == ({(machine_id(1), boot_id(1, 1))}, 1)


def test_capture_into_a_full_spool_leaves_no_partial_file(small_fs: Path) -> None:
    spool = small_fs / "spool"
    spool.mkdir()
    _fill(small_fs)
    root = BOOTS / "6.12.117+deb12-amd64-memblock" / "root"
    proc = run_cli("capture", "--root", str(root), "--machine-id", "1" * 32,
                   "--boot-id", "00000000-0000-0000-0000-000000000001", "-o", f"{spool}/")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and os.strerror(errno.ENOSPC) in lines[0], lines
    assert list(spool.iterdir()) == []  # no partial file, no temporary left behind
