"""Retention (`memledger prune`) and the schema (`memledger db`), on SQLite and PostgreSQL.

The oracle is the tables themselves: every test reads back exactly which rows are left.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from capturegen import T0, boot_id, machine_id, make_capture
from conftest import run_cli
from memledger.store import prune as prune_module
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import ingest_bytes, ingest_many, prepare
from memledger.store.migrate import HEAD, current_revision, schema_state, upgrade
from memledger.store.prune import PruneReport, _doomed_boots, _remove_boots, _Rules, prune
from memledger.store.runtime import ingest_batch
from memledger.store.schema import (
    boots,
    captures,
    events,
    hosts,
    ledger_documents,
    ledgers,
    runtime_batches,
    runtime_events,
)
from memledger.tracer.runtime import BatchHeader, RuntimeEvent, render_batch
from sqlalchemy import Engine, func, select, text

# Starts servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

NAME = "6.1.0-47-amd64-default"
NOW = T0
DAY = timedelta(days=1)


@pytest.fixture
def engine(db_url: str) -> Any:
    eng = make_engine(resolve_url(db_url))
    upgrade(eng)
    yield eng
    eng.dispose()


def _boot(eng: Engine, host: int, boot: int, days_ago: float, seen: datetime | None = None,
          name: str = NAME) -> bytes:
    """Store boot ``boot`` of host ``host`` captured ``days_ago`` before NOW (the host last
    seen at ``seen``, else a minute after the capture); its capture file's bytes."""
    when = NOW - timedelta(days=days_ago)
    data = make_capture(name, host, boot, captured_at=when)
    assert ingest_bytes(eng, data, "t", now=seen or when + timedelta(minutes=1)).status in (
        "new", "replaced")
    return data


def _batch(eng: Engine, host: int, boot: int, days_ago: float, seq: int = 1) -> None:
    when = NOW - timedelta(days=days_ago)
    h = BatchHeader(machine_id(host), boot_id(host, boot), "bcc", "t", when,  # type: ignore[arg-type]
                    f"host-{host}", "6.1.0-47-amd64", 0)
    events_ = [RuntimeEvent(seq, 1.0, "freed", "free_initrd_mem", 0x1000, 0x2000, 4096, None)]
    assert ingest_batch(eng, render_batch(h, events_), now=when).status == "new"


def _state(eng: Engine) -> dict[str, Any]:
    """Every table's rows that prune touches, keyed by what they belong to."""
    with eng.connect() as conn:
        pk = {r.id: (r.machine_id, r.boot_id) for r in conn.execute(
            select(boots.c.id, hosts.c.machine_id, boots.c.boot_id)
            .join(hosts, hosts.c.id == boots.c.host_id))}
        cap_of = dict(conn.execute(select(boots.c.id, captures.c.sha256)
                                   .join(captures, captures.c.id == boots.c.capture_id)).all())
        out = {
            "hosts": set(conn.execute(select(hosts.c.machine_id)).scalars()),
            "boots": set(pk.values()),
            "captures": sorted(conn.execute(select(captures.c.sha256)).scalars()),
            "boot_captures": {pk[b]: sha for b, sha in cap_of.items()},
            "ledgers": sorted(pk[b] for b in conn.execute(select(ledgers.c.boot_pk)).scalars()),
            "documents": sorted(pk[b] for b in conn.execute(
                select(ledger_documents.c.boot_pk)).scalars()),
            "events": {pk[b]: n for b, n in conn.execute(
                select(events.c.boot_pk, func.count()).group_by(events.c.boot_pk))},
            "batches": sorted(tuple(r) for r in conn.execute(
                select(hosts.c.machine_id, runtime_batches.c.boot_id)
                .join(hosts, hosts.c.id == runtime_batches.c.host_id))),
            "runtime_events": conn.execute(select(func.count()).select_from(runtime_events)
                                           ).scalar_one(),
        }
        if eng.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    return out


def _key(host: int, boot: int) -> tuple[str, str]:
    return machine_id(host), boot_id(host, boot)


def test_older_than_removes_old_boots_with_all_they_own(engine: Engine) -> None:
    """Host 1 keeps its recent boot; host 2's only boot is old and goes with the host;
    host 3 sent only an old runtime batch; host 4's old boot goes but the host was seen
    recently (a capture sent again) and stays; runtime batches go with their boot."""
    old1 = _boot(engine, 1, 1, 100)
    _boot(engine, 1, 2, 10)
    old2 = _boot(engine, 2, 1, 120)
    old4 = _boot(engine, 4, 1, 95, seen=NOW - 2 * DAY)
    _batch(engine, 1, 1, 100)
    _batch(engine, 1, 2, 10)
    _batch(engine, 2, 1, 119)
    _batch(engine, 3, 7, 150)          # its boot was never stored
    _batch(engine, 3, 8, 5)            # nor this one's, but it is recent
    before = _state(engine)
    assert before["events"][_key(1, 1)] > 0 and len(before["captures"]) == 4

    dry = prune(engine, older_than=timedelta(days=90), keep=None, now=NOW, dry_run=True)
    assert _state(engine) == before
    report = prune(engine, older_than=timedelta(days=90), keep=None, now=NOW)
    assert report == PruneReport(boots=3, captures=3, runtime_batches=3, hosts=1,
                                 capture_bytes=len(old1) + len(old2) + len(old4), dry_run=False)
    assert dry == PruneReport(**{**report.as_dict(), "dry_run": True})

    after = _state(engine)
    kept = _key(1, 2)
    assert after["hosts"] == {machine_id(1), machine_id(3), machine_id(4)}
    assert after["boots"] == {kept}
    assert after["captures"] == [before["boot_captures"][kept]]
    assert after["ledgers"] == after["documents"] == [kept]
    assert after["events"] == {kept: before["events"][kept]}
    assert after["batches"] == [_key(1, 2), _key(3, 8)]
    assert after["runtime_events"] == 2
    # Nothing is left to remove.
    assert prune(engine, older_than=timedelta(days=90), keep=None, now=NOW) == \
        PruneReport(0, 0, 0, 0, 0, False)


def test_keep_per_host_and_both_rules(engine: Engine) -> None:
    """Host 1 has five boots (two captured at the same time: the one stored later is
    newer); host 2 one old boot. --keep-per-host 2 keeps host 1's newest two and host 2's
    boot; with --older-than 60d as well, host 2's boot goes too (either rule removes)."""
    for boot, days in ((1, 50), (2, 40), (3, 30), (4, 30), (5, 5)):
        _boot(engine, 1, boot, days)
    _boot(engine, 2, 1, 70, seen=NOW - 70 * DAY)
    _batch(engine, 1, 1, 50)
    dry = prune(engine, older_than=None, keep=2, now=NOW, dry_run=True)
    report = prune(engine, older_than=None, keep=2, now=NOW)
    assert (report.boots, report.captures, report.runtime_batches, report.hosts) == (3, 3, 1, 0)
    assert dry.as_dict() == {**report.as_dict(), "dry_run": True}
    assert _state(engine)["boots"] == {_key(1, 4), _key(1, 5), _key(2, 1)}

    report = prune(engine, older_than=timedelta(days=60), keep=2, now=NOW)
    assert (report.boots, report.captures, report.runtime_batches, report.hosts) == (1, 1, 0, 1)
    after = _state(engine)
    assert after["boots"] == {_key(1, 4), _key(1, 5)} and after["hosts"] == {machine_id(1)}
    assert len(after["captures"]) == 2 and after["batches"] == []


def test_bad_rules_are_refused(engine: Engine) -> None:
    for kwargs in ({"older_than": None, "keep": None}, {"older_than": None, "keep": 0},
                   {"older_than": -DAY, "keep": None}):
        with pytest.raises(ValueError):
            prune(engine, now=NOW, **kwargs)  # type: ignore[arg-type]


def test_a_boot_given_a_new_capture_after_the_decision_keeps_it(engine: Engine) -> None:
    """The boots to remove are chosen first, then removed; between the two, ingest gives
    boot 1 a recent capture and boot 2 a capture still older than the cutoff, and a host
    stores a newer boot that makes boot 3 one of its newest. The removal judges each by
    what it holds then: boot 1 stays with its new capture, boot 2 goes with its new
    capture (no capture is left without a boot), boot 3 stays."""
    _boot(engine, 1, 1, 100)
    _boot(engine, 2, 1, 100)
    _boot(engine, 3, 1, 20)
    _boot(engine, 3, 2, 10)
    rules = _Rules(NOW - 90 * DAY, 1)
    with engine.connect() as conn:
        doomed = [r.id for r in _doomed_boots(conn, rules)]
    assert len(doomed) == 3
    new1 = _boot(engine, 1, 1, 1)
    _boot(engine, 2, 1, 99)
    _boot(engine, 3, 1, 5)             # boot 1 of host 3 is now its newest
    assert _remove_boots(engine, doomed, rules)[:2] == (1, 1)
    after = _state(engine)
    assert after["boots"] == {_key(1, 1), _key(3, 1), _key(3, 2)}
    assert after["boot_captures"][_key(1, 1)] == hashlib.sha256(new1).hexdigest()
    assert sorted(after["boot_captures"].values()) == after["captures"]


def test_concurrent_ingest_loses_nothing_new(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prune of 24 old boots, a few to a transaction, while another connection gives 12
    of them a recent capture: whatever the interleaving, those 12 stay with their new
    capture, the other 12 go, and no capture is left without its boot."""
    monkeypatch.setattr(prune_module, "CHUNK", 3)
    for host in range(4):
        for boot in range(6):
            _boot(engine, host, boot, 100)
    fresh = [prepare(make_capture(NAME, host, boot, captured_at=NOW - timedelta(hours=host + boot)),
                     "t") for host in range(4) for boot in range(0, 6, 2)]
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.extend(
        r for p in fresh for r in ingest_many(engine, [(p, "t")], now=NOW)))
    worker.start()
    prune(engine, older_than=timedelta(days=90), keep=None, now=NOW)
    worker.join()
    assert len(results) == 12 and {r.status for r in results} <= {"new", "replaced"}
    prune(engine, older_than=timedelta(days=90), keep=None, now=NOW)  # what was left in flight
    after = _state(engine)
    assert after["boots"] == {_key(h, b) for h in range(4) for b in range(0, 6, 2)}
    assert after["boot_captures"] == {(p.manifest.machine_id, p.manifest.boot_id): p.sha256
                                      for p in fresh}
    assert len(after["captures"]) == 12 and len(after["ledgers"]) == 12


# -- the command ----------------------------------------------------------------------

def test_prune_command_output_and_exit_codes(db_url: str) -> None:
    eng = make_engine(resolve_url(db_url))
    upgrade(eng)
    real_now = datetime.now(UTC)
    for boot, days in ((1, 200), (2, 100), (3, 1)):
        data = make_capture(NAME, 1, boot, captured_at=real_now - timedelta(days=days))
        ingest_bytes(eng, data, "t")
    eng.dispose()
    dry = run_cli("prune", "--older-than", "90d", "--dry-run", "--json", "--db", db_url)
    assert dry.returncode == 0, dry.stderr
    out = json.loads(dry.stdout)
    assert (out["boots"], out["captures"], out["dry_run"], out["keep_per_host"]) == (2, 2, True, None)
    text_run = run_cli("prune", "--older-than", "150d", "--keep-per-host", "2", "--db", db_url)
    assert text_run.returncode == 0, text_run.stderr
    lines = text_run.stdout.splitlines()
    assert "removed the boots captured before" in lines[0] and "past the newest 2" in lines[0]
    assert lines[1].split() == ["boots", "1"]
    assert lines[3].split() == ["runtime", "batches", "0"]
    assert json.loads(run_cli("prune", "--keep-per-host", "1", "--json", "--db", db_url)
                      .stdout)["boots"] == 1
    listed = json.loads(run_cli("boots", "--json", "--db", db_url).stdout)
    assert [b["boot_id"] for b in listed] == [boot_id(1, 3)]
    for args, message in ((["--dry-run"], "prune needs --older-than"),
                          (["--keep-per-host", "0"], "--keep-per-host '0'"),
                          (["--keep-per-host", "x"], "--keep-per-host 'x'"),
                          (["--older-than", "90x"], "--older-than '90x' is not a duration"),
                          (["--older-than", "0"], "must be more than 0")):
        bad = run_cli("prune", *args, "--db", db_url)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, (args, bad.stderr)
        assert message in bad.stderr and bad.stdout == ""


# -- the schema -----------------------------------------------------------------------

def test_schema_state_and_db_commands(db_url: str) -> None:
    """Empty, behind (a store made at 0004), current and newer (a revision this memledger
    has no script for), each said by schema_state, `db status` and its exit code; `db
    upgrade` says from which revision to which, and refuses a newer store."""
    if db_url.startswith("sqlite:///"):
        open(db_url.removeprefix("sqlite:///"), "wb").close()  # an empty file: an empty store
    eng = make_engine(resolve_url(db_url))
    assert schema_state(eng) == "empty"
    status = run_cli("db", "status", "--db", db_url)
    assert status.returncode == 3 and "schema none" in status.stdout and "empty" in status.stdout
    upgrade(eng, "0004")
    assert schema_state(eng) == "behind"
    status = run_cli("db", "status", "--json", "--db", db_url)
    assert status.returncode == 3
    assert json.loads(status.stdout) | {"database": None} == {
        "database": None, "revision": "0004", "head": HEAD, "state": "behind"}
    assert "run `memledger db upgrade`" in run_cli("db", "status", "--db", db_url).stdout
    up = run_cli("db", "upgrade", "--db", db_url)
    assert up.returncode == 0 and up.stdout.rstrip().endswith(f"schema 0004 → {HEAD}"), up.stderr
    assert current_revision(eng) == HEAD and schema_state(eng) == "current"
    status = run_cli("db", "status", "--db", db_url)
    assert status.returncode == 0 and status.stdout.rstrip().endswith(": current")
    again = run_cli("db", "upgrade", "--db", db_url)
    assert again.returncode == 0 and "already current" in again.stdout
    with eng.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    assert schema_state(eng) == "newer"
    status = run_cli("db", "status", "--db", db_url)
    assert status.returncode == 3 and "newer than this memledger (upgrade memledger)" in status.stdout
    refused = run_cli("db", "upgrade", "--db", db_url)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "0099_from_the_future is newer than this memledger's" in refused.stderr
    assert current_revision(eng) == "0099_from_the_future"
    eng.dispose()
