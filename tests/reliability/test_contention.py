"""Eight writers at once on one store, SQLite and PostgreSQL (issue 8).

Each writer is a stream of real ``memledger ingest -j 1`` processes, six in a row, of
eight captures each: five boots only it has and three boots that every writer sends in
the same round, so the transactions collide on the same keys. Every process must exit 0
with no "database is locked", deadlock or traceback reaching the user, and the store
must hold every boot exactly once: 0 lost rows, 0 doubled.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from capturegen import BOOT_NAMES, boot_id, machine_id, make_capture
from conftest import MEMLEDGER
from memledger.store.db import make_engine, resolve_url
from memledger.store.schema import boots, captures, hosts, ledgers
from sqlalchemy import func, select, text

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

WRITERS, ROUNDS, OWN, SHARED = 8, 6, 5, 3
BAD = re.compile(r"locked|deadlock|Traceback|could not serialize|busy", re.I)


def _write_files(tmp: Path) -> tuple[dict[tuple[int, int], list[Path]], set[tuple[str, str]]]:
    files: dict[tuple[int, int], list[Path]] = {}
    keys = set()
    for r in range(ROUNDS):
        shared = [(1000 + r * SHARED + s, 1) for s in range(SHARED)]
        for w in range(WRITERS):
            d = tmp / f"w{w}" / f"r{r}"
            d.mkdir(parents=True)
            own = [(w * 100 + r * OWN + o, 2) for o in range(OWN)]
            for host, b in own + shared:
                p = d / f"{host}-{b}.tar.gz"
                p.write_bytes(make_capture(BOOT_NAMES[host % len(BOOT_NAMES)], host, b))
                keys.add((machine_id(host), boot_id(host, b)))
            files[(w, r)] = [d]
    return files, keys


def _run_writer(url: str, dirs: list[list[Path]]) -> list[subprocess.CompletedProcess[str]]:
    return [subprocess.run([MEMLEDGER, "ingest", "--db", url, "-j", "1", *map(str, d)],
                           capture_output=True, text=True, timeout=300, check=False) for d in dirs]


def test_eight_writers_lose_and_double_nothing(db_url: str, tmp_path: Path) -> None:
    files, keys = _write_files(tmp_path)
    assert len(keys) == WRITERS * ROUNDS * OWN + ROUNDS * SHARED
    with ThreadPoolExecutor(WRITERS) as pool:
        runs = list(pool.map(lambda w: _run_writer(db_url, [files[(w, r)] for r in range(ROUNDS)]),
                             range(WRITERS)))
    procs = [p for writer in runs for p in writer]
    assert len(procs) == WRITERS * ROUNDS
    for p in procs:
        assert p.returncode == 0 and not BAD.search(p.stderr + p.stdout), p.stderr[-1500:]
    eng = make_engine(resolve_url(db_url), create=False)
    with eng.connect() as conn:
        stored = set(conn.execute(select(hosts.c.machine_id, boots.c.boot_id)
                                  .join(hosts, hosts.c.id == boots.c.host_id)).all())
        counts = [conn.execute(select(func.count()).select_from(t)).scalar_one()
                  for t in (boots, captures, ledgers)]
        if eng.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    eng.dispose()
    assert stored == keys
    assert counts == [len(keys)] * 3
