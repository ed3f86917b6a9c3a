"""Writers that share one store must not hurt each other (issue 28), SQLite and PostgreSQL.

The writers are the real ones: the daemon (its spool), ``memledger ingest``,
``memledger reprocess`` and a second daemon. Each pair runs at once over the same boots,
each writer sending later captures of them, and afterwards:

- every boot is stored once and points at its latest capture;
- every boot's ledger is the one computed from the capture it points at: each capture
  version of a boot is a different kernel, so the release the ledger document read from
  the kernel's own banner must be the release of the capture the boot points at;
- every process exits 0, and nothing failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from capturegen import BOOTS, boot_id, machine_id, make_capture
from conftest import MEMLEDGER
from daemonrun import Daemon, drop, wait_for
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import ingest_many, prepare
from memledger.store.migrate import upgrade
from memledger.store.schema import boots, captures, hosts, ledger_documents
from sqlalchemy import func, select, text

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

HOSTS = 6
# Capture version k of every boot is a boot of kernel VERSIONS[k], taken k hours later.
VERSIONS = ("5.10.0-32-amd64-default", "6.1.0-47-amd64-default", "6.12.117+deb12-amd64-default")


def _release(name: str) -> str:
    return (BOOTS / name / "root/proc/sys/kernel/osrelease").read_text().strip()


def _files(tmp: Path, version: int) -> list[Path]:
    d = tmp / f"v{version}"
    d.mkdir()
    out = []
    for h in range(HOSTS):
        p = d / f"v{version}-{machine_id(h)}-{boot_id(h, 0)}.tar.gz"
        p.write_bytes(make_capture(VERSIONS[version], h, 0, minutes=60 * version))
        out.append(p)
    return out


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEMLEDGER, *args], capture_output=True, text=True, timeout=600,
                          check=False)


class _Writers:
    """The writers of one test: each a thread; what each process said is kept."""

    def __init__(self, tmp: Path, db: str) -> None:
        self.tmp, self.db = tmp, db
        self.procs: list[subprocess.CompletedProcess[str]] = []
        self.daemons: list[tuple[Daemon, Path]] = []
        self.threads: list[threading.Thread] = []
        self.feeding = 0
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []

    def _thread(self, fn: Callable[[], None], feeds: bool) -> None:
        def body() -> None:
            try:
                fn()
            except BaseException as exc:  # raised again by run(), in the test's thread
                self.errors.append(exc)
            finally:
                if feeds:
                    with self.lock:
                        self.feeding -= 1
        if feeds:
            self.feeding += 1
        self.threads.append(threading.Thread(target=body))

    def ingest(self, files: list[Path]) -> None:
        """``memledger ingest``, a process a file, so that it spans the run."""
        def body() -> None:
            for i in range(len(files)):
                self.procs.append(_run("ingest", "--db", self.db, "-j", "1",
                                       str(files[i])))
        self._thread(body, True)

    def daemon(self, files: list[Path]) -> None:
        """A daemon with its own spool, fed one file at a time."""
        spool = self.tmp / f"spool{len(self.daemons)}"
        spool.mkdir(mode=0o2770)
        d = Daemon(self.tmp, self.db, spool)
        self.daemons.append((d, spool))

        def body() -> None:
            for f in files:
                drop(spool, f.name, f.read_bytes())
                time.sleep(0.1)
            wait_for("the daemon to store every file",
                     lambda: len(os.listdir(spool / "done")) + len(os.listdir(spool / "failed"))
                     == len(files), 300)
        self._thread(body, True)

    def reprocess(self) -> None:
        """``memledger reprocess`` again and again while anything is being fed, and once
        after."""
        def body() -> None:
            while True:
                feeding = self.feeding
                self.procs.append(_run("reprocess", "--db", self.db))
                if not feeding:
                    return
        self._thread(body, False)

    def run(self) -> None:
        for t in self.threads:
            t.start()
        for t in self.threads:
            t.join(600)
        if self.errors:
            raise self.errors[0]
        for d, spool in self.daemons:
            assert d.stop() == 0
            assert not os.listdir(spool / "failed") and "Traceback" not in d.text(), d.text()[-3000:]
        for p in self.procs:
            assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
            assert "0 failed" in p.stderr.splitlines()[-1], p.stderr[-2000:]


PAIRS = {
    "daemon+ingest": lambda w, v1, v2: (w.daemon(v1), w.ingest(v2)),
    "daemon+daemon": lambda w, v1, v2: (w.daemon(v1), w.daemon(v2)),
    "daemon+reprocess": lambda w, v1, v2: (w.daemon(v1 + v2), w.reprocess()),
    "ingest+reprocess": lambda w, v1, v2: (w.ingest(v1 + v2), w.reprocess()),
}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_two_writers_at_once_keep_each_boot_s_latest_capture_and_its_own_ledger(
        db_url: str, tmp_path: Path, pair: str) -> None:
    v0, v1, v2 = (_files(tmp_path, k) for k in range(3))
    first = _run("ingest", "--db", db_url, *map(str, v0))
    assert first.returncode == 0, first.stderr
    w = _Writers(tmp_path, db_url)
    PAIRS[pair](w, v1, v2)
    w.run()

    engine = make_engine(resolve_url(db_url), create=False)
    with engine.connect() as conn:
        rows = conn.execute(
            select(hosts.c.machine_id, boots.c.boot_id, boots.c.kernel_release,
                   captures.c.captured_at, ledger_documents.c.document)
            .join(hosts, hosts.c.id == boots.c.host_id)
            .join(captures, captures.c.id == boots.c.capture_id)
            .join(ledger_documents, ledger_documents.c.boot_pk == boots.c.id)).all()
        n_captures = conn.execute(select(func.count()).select_from(captures)).scalar_one()
        if engine.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()
    assert sorted((r.machine_id, r.boot_id) for r in rows) == sorted(
        (machine_id(h), boot_id(h, 0)) for h in range(HOSTS))
    assert n_captures == HOSTS
    latest = _release(VERSIONS[2])
    for r in rows:
        assert r.kernel_release == latest
        # The ledger was computed from the capture the boot points at.
        assert r.document["kernel"]["release"] == latest, (r.machine_id, r.document["kernel"])


def test_a_capture_the_database_refuses_is_refused_alone(db_url: str, tmp_path: Path) -> None:
    """The last guard, behind the caps checked before the database: a value the database
    still refuses (PostgreSQL refuses a NUL in text; SQLite stores it) is refused with the
    database's reason, and the other captures of its batch are stored."""
    engine = make_engine(resolve_url(db_url))
    upgrade(engine)
    items = [(prepare(make_capture(VERSIONS[h % 3], h, 0), "test"), f"c{h}") for h in range(6)]
    items[3][0].boot["cmdline"] = "console=ttyS0\x00forged"
    results = ingest_many(engine, items)
    with engine.connect() as conn:
        stored = {r.machine_id for r in conn.execute(select(hosts.c.machine_id))}
    engine.dispose()
    refused = {r.machine_id for r in results if r.status == "refused"}
    if engine.dialect.name == "postgresql":
        assert refused == {machine_id(3)}
        assert "NUL" in (results[3].why or "") or "0x00" in (results[3].why or "")
    else:
        assert refused == set()
    assert stored == {machine_id(h) for h in range(6)} - refused
    assert [r.status for r in results if r.status != "refused"] == ["new"] * (6 - len(refused))


def test_a_failed_ingest_never_removes_a_store_a_daemon_uses(tmp_path: Path) -> None:
    """``ingest`` starts on a store that is not there yet, a daemon then starts on it,
    and the ingest fails: the daemon's store and what it stores afterwards stay."""
    db = tmp_path / "m.db"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    fifo = inbox / "slow.tar.gz"
    os.mkfifo(fifo)  # the ingest waits here, reading, until the test writes it
    proc = subprocess.Popen([MEMLEDGER, "ingest", "--db", str(db), "-j", "1", str(inbox)],
                            stderr=subprocess.PIPE, text=True)
    wait_for("ingest to wait on its input",
             lambda: Path(f"/proc/{proc.pid}/wchan").read_text() == "wait_for_partner", 60)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o2770)
    d = Daemon(tmp_path, str(db), spool)
    try:
        with open(fifo, "wb") as fh:
            fh.write(b"not a capture")
        assert proc.wait(60) == 2 and "slow.tar.gz" in (proc.stderr.read() if proc.stderr else "")
        drop(spool, "good.tar.gz", make_capture(VERSIONS[1], 7, 0))
        wait_for("the daemon to store it", lambda: os.listdir(spool / "done") == ["good.tar.gz"])
    finally:
        assert d.stop() == 0
    listed = _run("boots", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [b["machine_id"] for b in json.loads(listed.stdout)] == [machine_id(7)]


def _workers(pid: int) -> list[int]:
    """The worker processes of ``ingest -j``: the children of its forkserver."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"multiprocessing.forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
            return [int(w) for w in Path(f"/proc/{child}/task/{child}/children").read_text().split()]
    return []


def test_a_parser_killed_mid_ingest_loses_no_capture(tmp_path: Path) -> None:
    """``ingest -j 2`` of enough files for worker processes; one worker is killed with
    SIGKILL mid-run, as the OOM killer would: every capture is still stored, once."""
    d = tmp_path / "captures"
    d.mkdir()
    n = 1500  # over 2 x 256: ingest starts its workers, and they take a few seconds
    for h in range(n):
        (d / f"{h}.tar.gz").write_bytes(make_capture("6.12.117+deb12-amd64-memblock", h, 0))
    db = tmp_path / "m.db"
    proc = subprocess.Popen([MEMLEDGER, "ingest", "--db", str(db), "-j", "2", str(d)],
                            stderr=subprocess.PIPE, text=True)
    workers: list[int] = []

    def started() -> bool:
        try:
            workers[:] = _workers(proc.pid)
        except OSError:
            return False
        return bool(workers)
    wait_for("a worker process", started, 120)
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert err.strip().splitlines()[-1] == f"{n} new, 0 replaced, 0 duplicate, 0 older, 0 failed"
    engine = make_engine(resolve_url(str(db)), create=False)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(boots)).scalar_one() == n
    engine.dispose()
