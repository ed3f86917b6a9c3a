"""`memledger ingest` over a directory, in batches, with and without parse workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from capturegen import BOOT_NAMES, boot_id, machine_id, make_capture
from click.testing import CliRunner
from conftest import run_cli
from memledger.cli import store as store_commands
from memledger.store.db import make_engine, resolve_url
from memledger.store.schema import boots, hosts
from sqlalchemy import select

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow


def _spool(tmp: Path) -> Path:
    d = tmp / "captures"
    d.mkdir()
    for i, name in enumerate(BOOT_NAMES[:5]):
        (d / f"c{i}.tar.gz").write_bytes(make_capture(name, i % 2, i))
    (d / "c1-again.tar.gz").write_bytes(make_capture(BOOT_NAMES[1], 1, 1))  # a duplicate
    (d / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    (d / "notes.txt").write_text("not a capture: not *.tar.gz, not read\n")
    return d


def _stored(db: Path) -> set[tuple[str, str]]:
    eng = make_engine(resolve_url(str(db)), create=False)
    with eng.connect() as conn:
        rows = conn.execute(select(hosts.c.machine_id, boots.c.boot_id)
                            .join(hosts, hosts.c.id == boots.c.host_id)).all()
    eng.dispose()
    return {(r.machine_id, r.boot_id) for r in rows}


EXPECTED = {(machine_id(i % 2), boot_id(i % 2, i)) for i in range(5)}


def test_a_directory_is_its_captures_and_bad_files_are_one_line_each(tmp_path: Path) -> None:
    d = _spool(tmp_path)
    proc = run_cli("ingest", "--db", str(tmp_path / "m.db"), str(d))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "5 new, 0 replaced, 1 duplicate, 0 older, 1 failed"
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("memledger: error:")]
    assert errors == [ln for ln in errors if ln.startswith(f"memledger: error: {d}/broken.tar.gz: ")]
    assert len(errors) == 1
    assert _stored(tmp_path / "m.db") == EXPECTED


@pytest.mark.parametrize("jobs", [1, 2])
def test_parse_workers_and_small_batches_store_the_same(tmp_path: Path, jobs: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 2 (so that captures of one boot meet in a batch and across batches) and,
    with -j 2, the worker pool that large backfills use."""
    monkeypatch.setattr(store_commands, "INGEST_BATCH", 2)
    d = _spool(tmp_path)
    result = CliRunner().invoke(store_commands.ingest, ["--db", str(tmp_path / "m.db"), "-j", str(jobs),
                                                  str(d)])
    assert result.exit_code == 2, result.output
    assert "5 new, 0 replaced, 1 duplicate, 0 older, 1 failed" in result.output
    assert _stored(tmp_path / "m.db") == EXPECTED
