"""Signal handlers only set flags and wake the loop (issue 18).

At 5cfcfbc the SIGHUP handler put work on a queue.Queue, whose lock is not reentrant: a
SIGHUP arriving while the main thread held that lock deadlocked the daemon, and the next
signals killed it. Now the handlers set flags and the loop is woken through a pipe.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from capturegen import make_capture
from daemonrun import Daemon, drop, wait_for
from test_daemon import spool_state

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow


def test_a_sighup_storm_during_ingest_neither_deadlocks_nor_kills(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool)
    for i in range(40):
        drop(spool, f"storm-{i:02}.tar.gz", make_capture("6.12.117+deb12-amd64-default", 300 + i, 1))
    end, sent = time.monotonic() + 5, 0
    while time.monotonic() < end:  # as fast as one process can send them, for 5 s
        for _ in range(200):
            os.kill(d.proc.pid, signal.SIGHUP)
        sent += 200
    assert d.proc.poll() is None, d.text()[-2000:]
    drop(spool, "after.tar.gz", make_capture("6.12.117+deb12-amd64-default", 399, 1))
    wait_for("every file, the one after the storm included",
             lambda: len(spool_state(spool)[1]) == 41, 120)
    assert d.get("/metrics")[0] == 200
    assert d.stop() == 0
    assert "Traceback" not in d.text() and sent >= 1000
