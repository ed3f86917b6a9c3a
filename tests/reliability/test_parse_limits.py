"""Parsing is bounded in memory and time, and the watchdog is fed meanwhile (issue 18).

At 5cfcfbc a 1 GiB gzip bomb parsed for minutes in gigabytes with no WATCHDOG=1: systemd
killed the daemon, restarted it, and it took the same file again. Now captures are capped
at sizes real ones never reach, parsing runs in a child process with a memory limit and a
deadline, and the main loop pings the watchdog while it waits.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import tarfile
import time
import zlib
from pathlib import Path

import pytest
from capturegen import BOOTS, T0, boot_id, machine_id, make_capture
from daemonrun import Daemon, drop, wait_for
from memledger.tracer.capture import MAX_UNPACKED_BYTES

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

GOOD = make_capture("6.12.117+deb12-amd64-default", 7, 7)


# Five members of 200 MiB each: every one under any per-file cap, 1000 MiB in all.
BOMB_MEMBERS = ("dmesg.txt", "proc/iomem", "proc/zoneinfo", "proc/meminfo", "proc/cmdline")


def _bomb(member_bytes: int = 200 << 20) -> bytes:
    """A capture of BOMB_MEMBERS, each ``member_bytes`` of kernel-log-like text repeated:
    about 1 MB gzip-compressed."""
    manifest = json.dumps({"format": "memledger-capture", "format_version": 1,
                           "memledger_version": "test", "machine_id": machine_id(66),
                           "boot_id": boot_id(66, 1),
                           "captured_at": T0.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}).encode()
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = io.BytesIO()
    info = tarfile.TarInfo("manifest.json")
    info.size = len(manifest)
    out.write(z.compress(info.tobuf(format=tarfile.USTAR_FORMAT)))
    out.write(z.compress(manifest + b"\0" * (-len(manifest) % 512)))
    line = b"[    1.000000] x86/mm: Memory block size: 128MB\n"
    chunk = line * ((1 << 20) // len(line)) + b"\n" * ((1 << 20) % len(line))
    for name in BOMB_MEMBERS:
        info = tarfile.TarInfo(name)
        info.size = member_bytes
        out.write(z.compress(info.tobuf(format=tarfile.USTAR_FORMAT)))
        for _ in range(member_bytes >> 20):
            out.write(z.compress(chunk))
    out.write(z.compress(bytes(1024)))  # the end-of-archive blocks
    out.write(z.flush())
    return out.getvalue()


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, dict[str, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    return sock, {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}


def _pings(sock: socket.socket, seconds: float) -> int:
    end, n = time.monotonic() + seconds, 0
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            n += sock.recv(4096) == b"WATCHDOG=1"
        except TimeoutError:
            break
    return n


def _drain(sock: socket.socket) -> None:
    """Drop the messages already sent (pings piled up before the moment that matters)."""
    sock.setblocking(False)
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def test_a_gzip_bomb_is_refused_at_the_cap_while_the_watchdog_is_fed(tmp_path: Path) -> None:
    bomb = _bomb()
    assert len(bomb) < 4 << 20
    sock, env = _notify_socket(tmp_path)
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool, env=env)
    _drain(sock)  # count only the pings sent while the bomb is taken
    drop(spool, "bomb.tar.gz", bomb)
    assert _pings(sock, 3) >= 4  # every 0.5 s, whatever the parse is doing
    wait_for("the refusal", lambda: (spool / "failed" / "bomb.tar.gz.error").exists(), 60)
    reason = (spool / "failed" / "bomb.tar.gz.error").read_text()
    assert f"unpacks to more than {MAX_UNPACKED_BYTES} bytes" in reason, reason
    assert MAX_UNPACKED_BYTES == 64 << 20  # sized to real captures (tracer/capture.py)
    drop(spool, "good.tar.gz", GOOD)
    wait_for("the good capture", lambda: (spool / "done" / "good.tar.gz").exists(), 60)
    assert d.proc.poll() is None
    assert d.stop() == 0
    sock.close()


def test_a_parse_past_its_deadline_is_killed_and_refused(tmp_path: Path) -> None:
    """The parser child is stopped (SIGSTOP) as a parser stuck in a loop would be: the
    daemon pings the watchdog all along, kills the child at --parse.timeout, refuses the
    file, and parses the next one in a new child."""
    sock, env = _notify_socket(tmp_path)
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool,
               env={**env, "MEMLEDGER_PARSE_TIMEOUT": "4s"})
    drop(spool, "first.tar.gz", GOOD)  # starts the parser child
    wait_for("the first capture", lambda: (spool / "done" / "first.tar.gz").exists(), 60)
    forkserver = _children(d.proc.pid)
    workers = [c for f in forkserver for c in _children(f)]
    assert len(workers) == 1, (forkserver, workers)
    os.kill(workers[0], signal.SIGSTOP)
    _drain(sock)
    drop(spool, "stuck.tar.gz", make_capture("6.1.0-47-amd64-default", 8, 8))
    assert _pings(sock, 3) >= 4
    wait_for("the refusal", lambda: (spool / "failed" / "stuck.tar.gz.error").exists(), 30)
    assert "parsing it took more than 4 s" in (spool / "failed" / "stuck.tar.gz.error").read_text()
    drop(spool, "after.tar.gz", make_capture("6.1.0-47-amd64-default", 9, 9))
    wait_for("the next capture", lambda: (spool / "done" / "after.tar.gz").exists(), 60)
    assert d.stop() == 0
    sock.close()


def test_a_parse_over_its_memory_limit_is_refused(tmp_path: Path) -> None:
    """A real boot's log padded to 24 MiB needs about 150 MiB to parse: over a 120 MiB limit
    it is refused; the real boot itself parses under the same limit."""
    root = tmp_path / "big-root"
    shutil.copytree(BOOTS / "6.1.0-47-amd64-default" / "root", root)
    text = (root / "dmesg.txt").read_text()
    pad = "".join(text.splitlines(keepends=True)[300:600])
    (root / "dmesg.txt").write_text(text + pad * (24 * (1 << 20) // len(pad)))
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool,
               env={"MEMLEDGER_PARSE_MEMORY_LIMIT": "120MiB"})
    drop(spool, "big.tar.gz", make_capture(root, 5, 5))
    wait_for("the refusal", lambda: (spool / "failed" / "big.tar.gz.error").exists(), 60)
    assert "parsing it needs more than 120 MiB of memory" in \
        (spool / "failed" / "big.tar.gz.error").read_text()
    drop(spool, "good.tar.gz", GOOD)
    wait_for("the good capture", lambda: (spool / "done" / "good.tar.gz").exists(), 60)
    assert d.stop() == 0


def test_a_parser_killed_while_parsing_refuses_that_file_only(tmp_path: Path) -> None:
    """The kernel's OOM killer (the unit's MemoryMax=) takes the largest process, the
    parser: its file is refused, the daemon lives on and parses the next one anew."""
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool)
    drop(spool, "first.tar.gz", GOOD)  # starts the parser child
    wait_for("the first capture", lambda: (spool / "done" / "first.tar.gz").exists(), 60)
    (worker,) = [c for f in _children(d.proc.pid) for c in _children(f)]
    os.kill(worker, signal.SIGSTOP)  # so that it is surely parsing when it dies
    drop(spool, "killed.tar.gz", make_capture("6.1.0-47-amd64-default", 8, 8))
    time.sleep(1.5)
    os.kill(worker, signal.SIGKILL)
    wait_for("the refusal", lambda: (spool / "failed" / "killed.tar.gz.error").exists(), 30)
    assert (spool / "failed" / "killed.tar.gz.error").read_text() == \
        "the parser process was killed by SIGKILL while parsing it\n"
    drop(spool, "after.tar.gz", make_capture("6.1.0-47-amd64-default", 9, 9))
    wait_for("the next capture", lambda: (spool / "done" / "after.tar.gz").exists(), 60)
    assert d.metric('memledger_ingest_total{result="failed"}') == 1
    assert d.stop() == 0
