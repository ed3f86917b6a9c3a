"""No file is lost or left behind in the spool, however events go (issue 18).

At 5cfcfbc a capture renamed in under the name of one being parsed was moved to done/
unread (lost), and a file whose inotify event never came (a hard link, a queue overflow,
a spool directory made anew, a read that failed for want of descriptors) waited until a
SIGHUP or a restart while /metrics looked healthy. Now a file is claimed before it is
read, the spool is listed again on a timer, on overflow and when it is made anew, and
/metrics shows how many files wait and for how long.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from capturegen import BOOTS, boot_id, machine_id, make_capture
from daemonrun import Daemon, drop, wait_for
from test_daemon import spool_state, stored
from watchdog.events import FileClosedNoWriteEvent, FileSystemEventHandler
from watchdog.observers import Observer

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

GOOD = make_capture("6.12.117+deb12-amd64-default", 7, 7)
# --spool.rescan-interval, set as the unit's EnvironmentFile sets it.
RESCAN_2S = {"MEMLEDGER_SPOOL_RESCAN_INTERVAL": "2s"}
RESCAN_1H = {"MEMLEDGER_SPOOL_RESCAN_INTERVAL": "1h"}


def _slow_capture(tmp: Path, host: int, minutes: int = 0) -> bytes:
    """A real boot whose kernel log is padded to ~24 MiB (mid-boot lines repeated), so that
    parsing it takes about a second."""
    root = tmp / "slow-root"
    if not root.exists():
        shutil.copytree(BOOTS / "6.1.0-47-amd64-default" / "root", root)
        text = (root / "dmesg.txt").read_text()
        pad = "".join(text.splitlines(keepends=True)[300:600])
        (root / "dmesg.txt").write_text(text + pad * (24 * (1 << 20) // len(pad)))
    return make_capture(root, host, 1, minutes)


class _ReadDone(FileSystemEventHandler):
    """Sets ``event`` when the file ``expect()`` names is closed in inflight/ after being
    read (inotify IN_CLOSE_NOWRITE). By name: the observer's thread may deliver the close
    of an earlier file after ``expect()`` (seen in CI: the test then renamed the second
    file over a first one that the daemon had not taken yet)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.path = ""

    def expect(self, path: Path) -> None:
        self.path = str(path)
        self.event.clear()

    def on_closed_no_write(self, event: FileClosedNoWriteEvent) -> None:
        if os.fsdecode(event.src_path) == self.path:
            self.event.set()


@pytest.mark.parametrize("first", ["stored", "refused"])
def test_a_file_renamed_in_under_the_name_being_parsed_is_not_lost(first: str,
                                                                   tmp_path: Path) -> None:
    """The second file is renamed in the moment the daemon has read the first, while it
    parses it (the test's own inotify watch sees the daemon close the file). The first is
    stored, or refused once parsed (dated thousands of years ahead): either way the second
    is stored, not moved to done/ or failed/ in the first one's place."""
    spool = tmp_path / "spool"
    db = f"sqlite:///{tmp_path / 'm.db'}"
    d = Daemon(tmp_path, db, spool)
    read = _ReadDone()
    observer = Observer()
    observer.schedule(read, str(spool), recursive=True)
    observer.start()
    keys = set()
    for trial in range(3):
        name = f"same-{trial}.tar.gz"
        slow = _slow_capture(tmp_path, 40 + trial, 0 if first == "stored" else 4_000_000_000)
        wait_for("an idle daemon", lambda n=trial: len(spool_state(spool)[1]) == n * (
            2 if first == "stored" else 1), 120)
        read.expect(spool / "inflight" / name)
        drop(spool, name, slow)
        assert read.event.wait(30), "the daemon never read the first file"
        drop(spool, name, make_capture("6.12.117+deb12-amd64-default", 50 + trial, 1))
        keys.add((machine_id(50 + trial), boot_id(50 + trial, 1)))
        if first == "stored":
            keys.add((machine_id(40 + trial), boot_id(40 + trial, 1)))
    wait_for("every file handled", lambda: len(spool_state(spool)[1]) == len(keys)
             and not spool_state(spool)[0], 120)
    observer.stop()
    observer.join()
    assert d.stop() == 0
    assert stored(db)[0] == keys  # the second capture of each name too: none lost
    failed = spool_state(spool)[2]
    assert len(failed) == (0 if first == "stored" else 6), failed


def test_a_file_without_an_event_is_taken_by_the_periodic_rescan(tmp_path: Path) -> None:
    """A hard link into the spool makes no IN_CLOSE_WRITE or IN_MOVED_TO."""
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool, env=RESCAN_2S)
    outside = tmp_path / "outside.tar.gz"
    outside.write_bytes(GOOD)
    os.link(outside, spool / "linked.tar.gz")
    wait_for("the rescan", lambda: (spool / "done" / "linked.tar.gz").exists(), 30)
    assert d.stop() == 0


def test_an_inotify_overflow_makes_a_rescan(tmp_path: Path) -> None:
    """With the kernel's inotify queue cut to 16 events, a burst of 300 files overflows it;
    the rescan interval is an hour, so only the overflow's rescan can take them all."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    before = knob.read_text()
    spool = tmp_path / "spool"
    data = [make_capture("6.12.117+deb12-amd64-default", 200 + i, 1) for i in range(300)]
    try:
        # An inotify instance takes the limit when it is made: the daemon's is made at its
        # start, and keeps it once the system-wide setting is back.
        knob.write_text("16\n")
        d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool, env=RESCAN_1H)
    finally:
        knob.write_text(before)
    for i, blob in enumerate(data):
        drop(spool, f"burst-{i:03}.tar.gz", blob)
    wait_for("all 300 files", lambda: len(spool_state(spool)[1]) == 300, 240)
    assert "the inotify queue overflowed; rescanning the spool" in d.text()
    assert d.stop() == 0


def test_a_spool_moved_aside_and_made_again_is_watched_anew(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool, env=RESCAN_1H)
    spool.rename(tmp_path / "spool.old")
    spool.mkdir(mode=0o750)
    drop(spool, "after.tar.gz", GOOD)
    wait_for("the file in the new spool", lambda: (spool / "done" / "after.tar.gz").exists(), 30)
    assert d.stop() == 0


def test_a_read_that_fails_for_want_of_descriptors_is_retried(tmp_path: Path) -> None:
    """The daemon's descriptor limit is cut below what it holds (prlimit on the running
    process): taking the file fails with EMFILE. /metrics shows it waiting; once the limit
    is back, the retry stores it without a SIGHUP."""
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool, env=RESCAN_1H)
    pid = str(d.proc.pid)
    subprocess.run(["prlimit", "--pid", pid, "--nofile=4:4096"], check=True)
    try:
        drop(spool, "starved.tar.gz", GOOD)
        wait_for("the EMFILE", lambda: "Too many open files" in d.text(), 30)
    finally:
        subprocess.run(["prlimit", "--pid", pid, "--nofile=4096:4096"], check=True)
    assert spool_state(spool)[0] == ["starved.tar.gz"]
    waiting = d.get("/metrics")[2]  # read now, checked once the retry is seen
    wait_for("the retry", lambda: (spool / "done" / "starved.tar.gz").exists(), 30)
    assert "memledger_spool_waiting_files 1.0" in waiting.splitlines()
    age = next(float(line.split()[1]) for line in waiting.splitlines()
               if line.startswith("memledger_spool_oldest_waiting_age_seconds "))
    assert age > 0
    assert d.metric("memledger_spool_waiting_files") == 0
    assert d.metric("memledger_spool_oldest_waiting_age_seconds") == 0
    assert d.stop() == 0
    assert "Traceback" not in d.text()
