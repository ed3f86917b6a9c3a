"""Names, directories, labels and reads that an attacker or an accident can make unbounded (issue 18).

At 5cfcfbc: a done/ made a symlink had start-up pruning delete week-old files wherever it
pointed; a refused file with a 245-character name never left the spool (NAME.error was
too long a name); a spool name with a newline wrote a forged log line; ``analyze
/dev/zero`` read until MemoryError; a 20 MB DMI string became a 20 MB label on every scrape.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from capturegen import BOOTS, machine_id, make_capture
from conftest import MEMLEDGER, run_cli
from daemonrun import Daemon, drop, wait_for
from test_daemon import spool_state

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

NOBODY = 65534
MAX_LABEL_CHARS = 128  # docs/reliability.md's bound on a label value (exporters/metrics.py)
WEEK_AGO = time.time() - 8 * 86400


def _start(tmp_path: Path, spool: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEMLEDGER, "daemon", "--db", f"sqlite:///{tmp_path / 'm.db'}",
                           "--spool", str(spool), "--web.listen-address", "127.0.0.1:0",
                           "--no-capture-self"], capture_output=True, text=True, timeout=60,
                          check=False)


def _symlink_to(victim: Path) -> Callable[[Path], None]:
    return lambda p: p.symlink_to(victim, target_is_directory=True)


def _nobodys(p: Path) -> None:
    p.mkdir()
    os.chown(p, NOBODY, NOBODY)


@pytest.mark.parametrize(("sub", "how", "phrase"), [
    ("done", "symlink", "a symlink, not a directory"),
    ("failed", "symlink", "a symlink, not a directory"),
    ("inflight", "symlink", "a symlink, not a directory"),
    ("done", "nobody", f"owned by uid {NOBODY}"),
])
def test_an_unsafe_subdirectory_stops_the_start_and_nothing_is_pruned(
        sub: str, how: str, phrase: str, tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.mkdir()
    old = victim / "old-report.txt"
    old.write_text("keep me")
    os.utime(old, (WEEK_AGO, WEEK_AGO))
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o750)
    (_symlink_to(victim) if how == "symlink" else _nobodys)(spool / sub)
    proc = _start(tmp_path, spool)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"memledger: error: {spool / sub}: ") \
        and phrase in lines[0], lines
    assert old.read_text() == "keep me"


def test_a_refused_file_with_a_long_name_leaves_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool)
    name = "x" * 238 + ".tar.gz"  # 245 characters: NAME.error would be 251, NAME.error.1 253
    drop(spool, name, b"not a capture")
    wait_for("the refusal", lambda: len(spool_state(spool)[2]) == 2, 30)
    drop(spool, name, b"not a capture either")  # the same name again: refused beside it
    wait_for("both refusals", lambda: len(spool_state(spool)[2]) == 4, 30)
    waiting, _, failed = spool_state(spool)
    assert waiting == []
    assert all(len(f.encode()) <= 255 for f in failed)
    errors = sorted(f for f in failed if f.endswith(".error"))
    assert [(spool / "failed" / e).read_text().startswith("not a memledger capture") for e in errors] \
        == [True, True]
    assert d.stop() == 0


def test_a_name_with_a_newline_cannot_forge_a_log_line(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool)
    drop(spool, "evil\nERROR forged: the database is gone", b"junk")
    wait_for("the refusal", lambda: len(spool_state(spool)[2]) == 2, 30)
    assert d.stop() == 0
    lines = d.text().splitlines()
    assert not any(line.startswith("ERROR forged") for line in lines)
    assert any("evil\\nERROR forged" in line for line in lines)


def test_a_huge_dmi_string_is_a_bounded_label(tmp_path: Path) -> None:
    """The longest DMI string a kernel writes (a sysfs page, newline included) in a capture
    of this daemon's own host (--root names it); a 20 MB one is refused by name."""
    root = tmp_path / "big-dmi"
    import shutil
    shutil.copytree(BOOTS / "6.12.117+deb12-amd64-default" / "root", root)
    (root / "sys/class/dmi/id").mkdir(parents=True, exist_ok=True)
    (root / "sys/class/dmi/id/bios_vendor").write_text("V" * 4095 + "\n")
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc/machine-id").write_text(machine_id(12) + "\n")
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool, "--root", str(host))
    drop(spool, "dmi.tar.gz", make_capture(root, 12, 1))
    wait_for("the capture", lambda: (spool / "done" / "dmi.tar.gz").exists(), 60)
    body = d.get("/metrics")[2]
    info = next(line for line in body.splitlines() if line.startswith("memledger_boot_info{"))
    vendor = info.split('firmware_vendor="', 1)[1].split('"', 1)[0]
    assert vendor.startswith("VVVV") and len(vendor) == MAX_LABEL_CHARS, len(vendor)
    assert len(body) < 200_000
    (root / "sys/class/dmi/id/bios_vendor").write_text("V" * 20_000_000 + "\n")
    drop(spool, "huge.tar.gz", make_capture(root, 12, 2))
    wait_for("the refusal", lambda: (spool / "failed" / "huge.tar.gz").exists(), 60)
    assert "sys/class/dmi/id/bios_vendor is 20000001 bytes" in d.text()
    assert d.stop() == 0


def test_analyze_refuses_a_device_and_an_endless_pipe() -> None:
    proc = run_cli("analyze", "/dev/zero")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("memledger: error: /dev/zero: a character device, not a log "
                                   "file or capture"), proc.stderr
    yes = subprocess.Popen(["yes", "[    0.000000] Linux version 6.1.0"], stdout=subprocess.PIPE)
    try:
        out = subprocess.run([MEMLEDGER, "analyze", "-"], stdin=yes.stdout, capture_output=True,
                             text=True, timeout=120, check=False)
    finally:
        yes.kill()
        yes.wait()
    assert out.returncode == 2
    assert out.stderr.strip() == ("memledger: error: -: more than 256 MiB; a kernel log is far "
                                  "smaller (cut out the boots you want)"), out.stderr[-500:]
