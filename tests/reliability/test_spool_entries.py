"""What may be dropped into the spool, and what the daemon does with it (issue 8).

Needs root (as CI runs): device nodes and other users' files are made for real. Each
hostile entry goes to failed/ with a one-line reason, is never opened for reading, and
does not stop a good capture behind it. A spool anyone can write to is not read at all.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from capturegen import make_capture
from conftest import MEMLEDGER
from daemonrun import Daemon, drop, wait_for

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

GOOD = make_capture("6.12.117+deb12-amd64-default", 7, 7)
NOBODY = 65534


def _symlink(p: Path) -> None:
    os.symlink("/etc/shadow", p)


def _socket(p: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))  # the node stays after close
    s.close()


def _nobodys(p: Path) -> None:
    tmp = p.with_name(".tmp-nobody")
    tmp.write_bytes(GOOD)
    os.chown(tmp, NOBODY, NOBODY)
    os.rename(tmp, p)


def _world_writable(p: Path) -> None:
    tmp = p.with_name(".tmp-ww")
    tmp.write_bytes(GOOD)
    os.chmod(tmp, 0o666)
    os.rename(tmp, p)


# name -> (how to make it, the reason failed/NAME.error must give)
ENTRIES: dict[str, tuple[Callable[[Path], None], str]] = {
    "a symlink to /etc/shadow": (_symlink, "refused: a symlink, not a regular file"),
    "a FIFO": (lambda p: os.mkfifo(p), "refused: a FIFO, not a regular file"),
    "a character device (/dev/mem's numbers)": (
        lambda p: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 1)),
        "refused: a character device, not a regular file"),
    "a block device": (lambda p: os.mknod(p, stat.S_IFBLK | 0o600, os.makedev(7, 0)),
                       "refused: a block device, not a regular file"),
    "a UNIX socket": (_socket, "refused: a socket, not a regular file"),
    "a directory": (lambda p: p.mkdir(), "refused: a directory, not a regular file"),
    "a capture owned by another user": (_nobodys, f"refused: owned by uid {NOBODY}"),
    "a world-writable capture": (_world_writable, "refused: world-writable (mode 0666)"),
}


@pytest.mark.parametrize("case", sorted(ENTRIES))
def test_hostile_spool_entry_is_refused(case: str, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "CI runs as root; device nodes need it"
    make, why = ENTRIES[case]
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o750)
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool)
    make(spool / "bad.tar.gz")
    wait_for("the refusal", lambda: (spool / "failed" / "bad.tar.gz.error").exists(), 30)
    reason = (spool / "failed" / "bad.tar.gz.error").read_text()
    assert reason.startswith(why) and reason.count("\n") == 1, reason
    drop(spool, "good.tar.gz", GOOD)  # the daemon carries on
    wait_for("the good capture", lambda: (spool / "done" / "good.tar.gz").exists(), 30)
    assert d.metric('memledger_ingest_total{result="failed"}') == 1
    assert d.metric('memledger_ingest_total{result="ok"}') == 1
    assert d.stop() == 0
    assert "Traceback" not in d.text()


def _start(tmp_path: Path, spool: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEMLEDGER, "daemon", "--db", f"sqlite:///{tmp_path / 'm.db'}",
                           "--spool", str(spool), "--web.listen-address", "127.0.0.1:0",
                           "--no-capture-self"], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("case", ["world-writable", "owned by another user"])
def test_an_unsafe_spool_is_not_read(case: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    drop(spool, "good.tar.gz", GOOD)
    if case == "world-writable":
        os.chmod(spool, 0o777)
        phrase = "world-writable (mode 0777)"
    else:
        os.chown(spool, NOBODY, NOBODY)
        phrase = f"owned by uid {NOBODY}"
    proc = _start(tmp_path, spool)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"memledger: error: {spool}: ") \
        and phrase in lines[0], lines
    assert (spool / "good.tar.gz").read_bytes() == GOOD  # left for when it is fixed


def test_a_spool_made_world_writable_at_runtime_is_left_alone(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o750)
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool)
    os.chmod(spool, 0o777)
    drop(spool, "waits.tar.gz", GOOD)
    wait_for("the complaint", lambda: "world-writable" in d.text(), 30)
    assert (spool / "waits.tar.gz").exists() and not (spool / "done" / "waits.tar.gz").exists()
    os.chmod(spool, 0o750)
    d.signal(signal.SIGHUP)
    wait_for("the rescan", lambda: (spool / "done" / "waits.tar.gz").exists(), 30)
    assert d.stop() == 0
    assert "Traceback" not in d.text()
