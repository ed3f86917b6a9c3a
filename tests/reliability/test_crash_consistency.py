"""kill -9 at 100 random moments of spool ingest (issue 8).

Thirty kills come at a random moment after the daemon is started (imports, the
migration check, the startup rescan); seventy at a random moment after that run's first
move to done/, so they fall in parsing, the SQLite commit and the move to done/ however
slow start-up is on a loaded host. After every kill the database must pass
``PRAGMA integrity_check``, hold each boot once (boots = captures = distinct keys) and
every file already in done/ must be stored (a file leaves the spool only after its
commit). New captures and duplicates keep arriving between trials. At the end one clean
run drains the spool: every capture stored exactly once, none lost, none failed.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from capturegen import BOOT_NAMES, Key, boot_id, machine_id, make_capture
from conftest import MEMLEDGER
from daemonrun import Daemon, drop, wait_for
from test_daemon import spool_state, stored

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow


def _after_kill(path: Path) -> tuple[set[Key], int, int]:
    """integrity_check, then the stored keys and the rows of boots and captures. A kill
    before the first migration committed leaves no tables (or no file): nothing stored."""
    if not path.exists():
        return set(), 0, 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "boots" not in tables:
            return set(), 0, 0
        keys = set(conn.execute("SELECT h.machine_id, b.boot_id FROM boots b "
                                "JOIN hosts h ON h.id = b.host_id").fetchall())
        n_boots = conn.execute("SELECT count(*) FROM boots").fetchone()[0]
        n_caps = conn.execute("SELECT count(*) FROM captures").fetchone()[0]
    return keys, n_boots, n_caps

TRIALS = 100


def test_kill_9_at_100_random_moments(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    for d in (spool, spool / "done", spool / "failed"):  # a kill may come before the daemon's
        d.mkdir()
    db = f"sqlite:///{tmp_path / 'm.db'}"
    rng = random.Random(100)
    key_of: dict[str, Key] = {}
    n = 0

    def add(count: int) -> None:
        nonlocal n
        for _ in range(count):
            if key_of and rng.random() < 0.15:  # a duplicate of something already sent
                old = rng.choice(sorted(key_of))
                data = next((d / old).read_bytes() for d in (spool, spool / "inflight",
                                                              spool / "done")
                            if (d / old).exists())
                name = f"dup-{n}.tar.gz"
                key_of[name] = key_of[old]
            else:
                data = make_capture(BOOT_NAMES[n % len(BOOT_NAMES)], n, 1)
                name = f"cap-{n}.tar.gz"
                key_of[name] = (machine_id(n), boot_id(n, 1))
            drop(spool, name, data)
            n += 1

    add(60)
    moments = random.Random(8)  # its own stream: add() draws a timing-dependent number
    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115
    for trial in range(TRIALS):
        # Always work to be in the middle of: the daemon stores up to 64 files at once,
        # and the kill may come 0.4 s after the first of them reach done/.
        if len(spool_state(spool)[0]) < 250:
            add(150)
        done_before = len(spool_state(spool)[1])
        proc = subprocess.Popen([MEMLEDGER, "daemon", "--db", db, "--spool", str(spool),
                                 "--web.listen-address", "127.0.0.1:0", "--no-capture-self"],
                                stdout=log, stderr=subprocess.STDOUT)
        # 30 kills (random.Random(8)'s draws) at a random moment from exec (imports, the
        # migration check, the startup rescan); 70 at a random moment after this run's
        # first move to done/, so they fall in ingest however long start-up takes.
        phase = "start-up" if moments.random() < 0.25 else "ingest"
        if phase == "start-up":
            time.sleep(moments.uniform(0.02, 0.8))
        else:
            wait_for(f"trial {trial}: the first file in done/",
                     lambda b=done_before, p=proc: len(spool_state(spool)[1]) > b
                     or p.poll() is not None, 60)
            time.sleep(moments.uniform(0.0, 0.4))
        proc.kill()
        assert proc.wait(30) == -9, f"trial {trial}: the daemon had exited by itself"
        waiting, done, failed = spool_state(spool)
        assert waiting or phase == "start-up", f"trial {trial}: the spool ran dry before the kill"
        assert failed == [], f"trial {trial}: {failed}"
        keys, n_boots, n_caps = _after_kill(tmp_path / "m.db")
        assert n_boots == n_caps == len(keys), f"trial {trial}: a boot stored twice"
        missing = {key_of[name] for name in done} - keys
        assert not missing, f"trial {trial}: in done/ but not stored: {missing}"
        assert len(waiting) + len(done) == len(key_of), f"trial {trial}: a file vanished"
    log.close()
    d = Daemon(tmp_path, db, spool)
    wait_for("the spool to drain", lambda: not spool_state(spool)[0], 300)
    assert d.stop() == 0
    waiting, done, failed = spool_state(spool)
    assert (waiting, failed) == ([], [])
    assert sorted(done) == sorted(key_of)
    keys, n_boots, n_caps, n_ledgers = stored(db)
    assert keys == set(key_of.values())
    assert n_boots == n_caps == n_ledgers == len(keys)
