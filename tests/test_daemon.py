"""The real daemon, as a subprocess: the spool, crashes, signals, sd_notify and HTTP.

The database is checked with SQL, the spool with directory listings, and the ingest
counters through /metrics; the captures are real fixture boots under made-up host ids.
"""

from __future__ import annotations

import gzip
import os
import random
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
from capturegen import BOOT_NAMES, BOOTS, T0, Key, boot_id, machine_id, make_capture, targz
from daemonrun import Daemon, drop, wait_for
from memledger.store.db import make_engine, resolve_url
from memledger.store.schema import boots, captures, hosts, ledgers
from sqlalchemy import func, select, text

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

GOOD_ONE = make_capture(BOOT_NAMES[0], 0, 0)


CORRUPT: list[tuple[bytes, str]] = [
    (GOOD_ONE[: len(GOOD_ONE) // 3], "not a readable tar.gz"),
    (gzip.compress(random.Random(1).randbytes(5000)), "not a readable tar.gz"),
    (targz({"dmesg.txt": b"x"}), "no manifest.json"),
    (targz({"manifest.json": b"{"}), "is not JSON"),
    (targz({"manifest.json": b"{}", "../escape": b"x"}), "path leaves the capture"),
    (b"", "not a memledger capture (not gzip data)"),
    (b"just some text\n", "not a memledger capture (not gzip data)"),
    (b"\x1f" + random.Random(2).randbytes(3000), "not a memledger capture (not gzip data)"),
]


def spool_state(spool: Path) -> tuple[list[str], list[str], list[str]]:
    """(waiting, done, failed) names; a file claimed but not finished (inflight/) waits."""
    inflight = spool / "inflight"
    waiting = sorted(p.name for d in (spool, inflight) if d.is_dir() for p in d.iterdir()
                     if p.name not in ("done", "failed", "inflight") and not p.name.startswith("."))
    done = sorted(p.name for p in (spool / "done").iterdir())
    failed = sorted(p.name for p in (spool / "failed").iterdir())
    return waiting, done, failed


def stored(db: str) -> tuple[set[Key], int, int, int]:
    """Stored (machine id, boot id) keys, and the rows of boots, captures and ledgers."""
    eng = make_engine(resolve_url(db), create=False)
    with eng.connect() as conn:
        keys = conn.execute(select(hosts.c.machine_id, boots.c.boot_id)
                            .join(hosts, hosts.c.id == boots.c.host_id)).all()
        n = [conn.execute(select(func.count()).select_from(t)).scalar_one()
             for t in (boots, captures, ledgers)]
        if eng.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    eng.dispose()
    return {(k.machine_id, k.boot_id) for k in keys}, n[0], n[1], n[2]


def _check_is_an_error(failed_dir: Path, name: str, why: str) -> None:
    assert (failed_dir / name).exists() or (failed_dir / name).is_symlink()
    reason = (failed_dir / f"{name}.error").read_text()
    assert why in reason and reason.count("\n") == 1, reason


def test_500_files_some_duplicated_some_corrupt(tmp_path: Path) -> None:
    """Done-when: every good boot stored once, every corrupt file in failed/ with its
    reason, nothing lost."""
    spool = tmp_path / "spool"
    spool.mkdir()
    db = f"sqlite:///{tmp_path / 'm.db'}"
    rng = random.Random(500)
    files: list[tuple[str, bytes]] = []
    good: dict[str, Key] = {}
    for i in range(392):  # every committed boot in turn, as many hosts as that takes
        h, b = divmod(i, len(BOOT_NAMES))
        fname = f"g-{h}-{b}.tar.gz"
        files.append((fname, make_capture(BOOT_NAMES[b], h, b)))
        good[fname] = (machine_id(h), boot_id(h, b))
    dups = [(f"d-{i}.tar.gz", data) for i, (_, data) in enumerate(rng.sample(files, 54))]
    corrupt = {f"c-{i}.tar.gz": CORRUPT[i % len(CORRUPT)] for i in range(54)}
    files += dups + [(n, d) for n, (d, _) in corrupt.items()]
    assert len(files) == 500
    rng.shuffle(files)
    for fname, data in files[:100]:  # waiting before the daemon starts: the startup rescan
        drop(spool, fname, data)
    d = Daemon(tmp_path, db, spool)
    for i, (fname, data) in enumerate(files[100:]):
        drop(spool, fname, data, atomic=i % 2 == 0)
    wait_for("the spool to drain",
             lambda: not spool_state(spool)[0] and len(spool_state(spool)[1]) + len(spool_state(spool)[2]) // 2 == 500)
    assert d.metric('memledger_ingest_total{result="ok"}') == 392
    assert d.metric('memledger_ingest_total{result="duplicate"}') == 54
    assert d.metric('memledger_ingest_total{result="failed"}') == 54
    assert d.metric("memledger_store_boots") == 392
    assert d.stop() == 0
    waiting, done, failed = spool_state(spool)
    assert waiting == []
    assert sorted(done) == sorted([n for n, _ in files if n not in corrupt])
    assert sorted(failed) == sorted([*corrupt, *(f"{n}.error" for n in corrupt)])
    for name, (_, why) in corrupt.items():
        _check_is_an_error(spool / "failed", name, why)
    keys, n_boots, n_caps, n_ledgers = stored(db)
    assert keys == set(good.values())
    assert n_boots == n_caps == n_ledgers == 392


def test_kill_9_mid_ingest_loses_and_doubles_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    db = f"sqlite:///{tmp_path / 'm.db'}"
    expected = set()
    for i in range(120):
        name = BOOT_NAMES[i % len(BOOT_NAMES)]
        drop(spool, f"b-{i}.tar.gz", make_capture(name, i, 1))
        expected.add((machine_id(i), boot_id(i, 1)))
    for threshold in (15, 45, 80):
        d = Daemon(tmp_path, db, spool)
        wait_for(f"{threshold} files in done/", lambda t=threshold: len(spool_state(spool)[1]) >= t)
        d.kill9()
        keys, n_boots, n_caps, _ = stored(db)  # integrity_check after the crash
        assert n_boots == n_caps == len(keys)
        assert len(spool_state(spool)[0]) + len(spool_state(spool)[1]) == 120
    d = Daemon(tmp_path, db, spool)
    wait_for("the spool to drain", lambda: not spool_state(spool)[0])
    assert d.stop() == 0
    waiting, done, failed = spool_state(spool)
    assert (len(waiting), len(done), failed) == (0, 120, [])
    keys, n_boots, n_caps, n_ledgers = stored(db)
    assert keys == expected
    assert n_boots == n_caps == n_ledgers == 120


def test_sigterm_finishes_the_current_capture_and_exits_0(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    db = f"sqlite:///{tmp_path / 'm.db'}"
    for i in range(80):
        drop(spool, f"b-{i}.tar.gz", make_capture(BOOT_NAMES[i % len(BOOT_NAMES)], i, 2))
    d = Daemon(tmp_path, db, spool)
    wait_for("5 files in done/", lambda: len(spool_state(spool)[1]) >= 5)
    d.signal(signal.SIGTERM)
    assert d.stop(timeout=30) == 0
    assert "SIGTERM: finishing the current capture, then exiting" in d.text()
    waiting, done, failed = spool_state(spool)
    assert len(waiting) > 0 and failed == []
    assert len(waiting) + len(done) == 80
    _, n_boots, _, _ = stored(db)
    assert n_boots == len(done)  # every file that left the spool is stored, and only those


def test_sighup_rescans(tmp_path: Path) -> None:
    """A hard link into the spool makes no close-write or moved-to event: only a rescan
    finds it."""
    spool = tmp_path / "spool"
    spool.mkdir()
    outside = tmp_path / "outside.tar.gz"
    outside.write_bytes(GOOD_ONE)
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool)
    os.link(outside, spool / "linked.tar.gz")
    time.sleep(1.5)
    assert spool_state(spool)[0] == ["linked.tar.gz"]
    d.signal(signal.SIGHUP)
    wait_for("the rescan", lambda: spool_state(spool)[1] == ["linked.tar.gz"], 30)
    assert d.stop() == 0


def test_refuses_symlinks_fifos_and_oversized_files(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(GOOD_ONE)
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool, "--spool.max-size", "4KiB")
    os.symlink(secret, spool / "link.tar.gz")
    os.mkfifo(spool / "pipe.tar.gz")
    drop(spool, "big.tar.gz", GOOD_ONE)  # a real capture, but over 4 KiB
    drop(spool, "small.tar.gz", b"x" * 100)  # under the cap, but not a capture
    wait_for("all four handled", lambda: len(spool_state(spool)[2]) == 8, 30)
    failed = spool / "failed"
    _check_is_an_error(failed, "link.tar.gz", "refused: a symlink, not a regular file")
    _check_is_an_error(failed, "pipe.tar.gz", "refused: a FIFO, not a regular file")
    _check_is_an_error(failed, "big.tar.gz", f"refused: {len(GOOD_ONE)} bytes is over the 4096-byte cap")
    _check_is_an_error(failed, "small.tar.gz", "not a memledger capture")
    assert (failed / "link.tar.gz").is_symlink() and secret.read_bytes() == GOOD_ONE
    assert d.metric('memledger_ingest_total{result="failed"}') == 4
    assert d.stop() == 0


def test_sd_notify_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    """The protocol systemd speaks: a datagram socket at $NOTIFY_SOCKET."""
    spool = tmp_path / "spool"
    spool.mkdir()
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool,
               env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    first = sock.recv(4096).decode().split("\n")
    assert first[0] == "READY=1" and first[1].startswith("STATUS=serving http://")
    assert d.get("/metrics")[0] == 200  # READY=1 came after the socket was bound
    start, pings = time.monotonic(), 0
    while time.monotonic() - start < 2.0:
        if sock.recv(4096) == b"WATCHDOG=1":
            pings += 1
    assert 6 <= pings <= 14  # every 0.2 s, half of WatchdogSec
    drop(spool, "one.tar.gz", GOOD_ONE)
    wait_for("a STATUS with the count", lambda: b"STATUS=1 stored" in sock.recv(4096), 30)
    d.signal(signal.SIGTERM)
    msgs = []
    while b"STOPPING=1" not in msgs:
        msgs.append(sock.recv(4096))
    assert d.stop() == 0
    sock.close()


def test_http_landing_page_and_telemetry_path(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    drop(spool, "one.tar.gz", GOOD_ONE)
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool, "--web.telemetry-path", "/m")
    wait_for("the ingest", lambda: spool_state(spool)[1] == ["one.tar.gz"], 30)
    code, ctype, body = d.get("/")
    assert code == 200 and ctype.startswith("text/html") and "<a href='/m'>Metrics</a>" in body
    assert "1 stored, 0 duplicate, 0 failed" in body
    # The current boot's summary: the stored boot, its kernel as the fixture's own osrelease.
    release = (BOOTS / BOOT_NAMES[0] / "root/proc/sys/kernel/osrelease").read_text().strip()
    assert f"<th>current boot</th><td>{boot_id(0, 0)} (kernel {release}, captured" in body
    assert "<th>firmware</th><td>EFI, EDK II" in body and "<th>EFI boot services</th>" in body
    code, ctype, body = d.get("/m")
    assert code == 200 and ctype.startswith("text/plain; version=")
    assert "memledger_store_boots 1.0" in body
    assert d.get("/metrics")[0] == 404
    assert d.stop() == 0


def test_done_retention(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (spool / "done").mkdir(parents=True)
    old, fresh = spool / "done" / "old.tar.gz", spool / "done" / "fresh.tar.gz"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    eight_days = time.time() - 8 * 86400
    os.utime(old, (eight_days, eight_days))
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool)
    wait_for("the prune", lambda: not old.exists(), 30)
    assert fresh.exists()
    assert d.stop() == 0


def test_bad_flags_are_one_line_exit_2(tmp_path: Path) -> None:
    from conftest import run_cli
    for flag, value, why in (("--web.listen-address", "nope", "expected [HOST]:PORT"),
                             ("--spool.max-size", "lots", "is not a size"),
                             ("--spool.retention", "forever", "is not a duration"),
                             ("--db", "mysql+nodriver://x/y", "mysql+nodriver://x/y")):
        proc = run_cli("daemon", "--db", str(tmp_path / "m.db"), flag, value)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and why in proc.stderr, proc.stderr


def test_four_daemons_on_postgresql(tmp_path: Path, pg_server: object) -> None:
    """Done-when on PostgreSQL: four daemons write at once, the same boots reach several
    of them, one is killed with -9 and restarted; no boot is lost or doubled, and every
    boot ends with its newest capture."""
    db = pg_server.new_database()  # type: ignore[attr-defined]
    spools = [tmp_path / f"spool{i}" for i in range(4)]
    for s in spools:
        s.mkdir()
    rng = random.Random(4)
    drops: list[tuple[int, str, bytes]] = []
    for i in range(120):
        name = BOOT_NAMES[i % len(BOOT_NAMES)]
        data = make_capture(name, 100 + i // 4, i % 4)
        for s in rng.sample(range(4), 2):
            drops.append((s, f"b-{i}-{s}.tar.gz", data))
    newer = {i: make_capture(BOOT_NAMES[(i + 1) % len(BOOT_NAMES)], 100 + i // 4, i % 4, minutes=30)
             for i in range(0, 120, 4)}
    for i, data in newer.items():
        drops.append((rng.randrange(4), f"n-{i}.tar.gz", data))
    for k, (data, _) in enumerate(CORRUPT):
        drops.append((k % 4, f"c-{k}.tar.gz", data))
    rng.shuffle(drops)
    daemons = [Daemon(tmp_path, db, s) for s in spools]
    for k, (s, fname, data) in enumerate(drops):
        drop(spools[s], fname, data)
        if k == len(drops) // 3:
            daemons[0].kill9()
            daemons[0] = Daemon(tmp_path, db, spools[0])

    def drained() -> bool:
        states = [spool_state(s) for s in spools]
        return all(not w for w, _, _ in states) and \
            sum(len(dn) + len(f) // 2 for _, dn, f in states) == len(drops)

    wait_for("all spools to drain", drained, 300)
    assert all(d.stop() == 0 for d in daemons)
    failed = sum(len(spool_state(s)[2]) for s in spools)
    assert failed == 2 * len(CORRUPT)
    keys, n_boots, n_caps, n_ledgers = stored(db)
    assert keys == {(machine_id(100 + i // 4), boot_id(100 + i // 4, i % 4)) for i in range(120)}
    assert n_boots == n_caps == n_ledgers == 120
    eng = make_engine(resolve_url(db), create=False)
    with eng.connect() as conn:
        times = conn.execute(select(hosts.c.machine_id, boots.c.boot_id, boots.c.captured_at)
                             .join(hosts, hosts.c.id == boots.c.host_id)).all()
    eng.dispose()
    newest = {(machine_id(100 + i // 4), boot_id(100 + i // 4, i % 4)) for i in newer}
    for t in times:
        minutes = 30 if (t.machine_id, t.boot_id) in newest else 0
        assert t.captured_at == T0 + timedelta(minutes=minutes)


def test_capture_self_at_start(tmp_path: Path) -> None:
    """The daemon stores the running boot of --root at start (here: this host)."""
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool, capture_self=True)
    wait_for("the self capture", lambda: "this boot: new boot" in d.text(), 60)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert f"this boot: new boot {boot} ({os.uname().release})" in d.text()
    assert d.metric("memledger_store_boots") == 1
    assert d.stop() == 0
