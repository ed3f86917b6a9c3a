"""The trust model (store/trust.py) and the database errors that are the file's fault (issue 18).

At 5cfcfbc a capture dated 9999, or claiming another host's boot with such a date,
replaced that boot and pinned it: every genuine later capture was counted "older". And on
PostgreSQL a NUL in a manifest string was a DataError retried every 30 s for ever, never
in failed/ and never counted.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from capturegen import BOOTS, T0, boot_id, machine_id, make_capture, targz
from daemonrun import Daemon, drop, wait_for
from memledger.store.db import make_engine, resolve_url
from memledger.tracer.runtime import FORMAT, FORMAT_VERSION
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from test_daemon import stored

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

DMESG = (BOOTS / "6.12.117+deb12-amd64-default" / "root" / "dmesg.txt").read_bytes()


def _capture_at(when: str, host: int = 7) -> bytes:
    m = {"format": "memledger-capture", "format_version": 1, "memledger_version": "test",
         "machine_id": machine_id(host), "boot_id": boot_id(host, 7), "captured_at": when}
    return targz({"manifest.json": json.dumps(m).encode(), "dmesg.txt": DMESG})


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_capture_from_the_future_cannot_pin_a_boot(db_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, db_url, spool)
    drop(spool, "genuine.tar.gz", make_capture("6.12.117+deb12-amd64-default", 7, 7))
    wait_for("the genuine capture", lambda: (spool / "done" / "genuine.tar.gz").exists(), 60)
    # Another writer claims host 7's boot, dated 9999, then 25 h ahead.
    drop(spool, "forged.tar.gz", _capture_at("9999-12-31T00:00:00Z"))
    ahead = _iso(datetime.now(UTC) + timedelta(hours=25))
    drop(spool, "ahead.tar.gz", _capture_at(ahead))
    wait_for("both refusals", lambda: (spool / "failed" / "ahead.tar.gz.error").exists()
             and (spool / "failed" / "forged.tar.gz.error").exists(), 60)
    why = (spool / "failed" / "forged.tar.gz.error").read_text()
    assert why.startswith("captured_at 9999-12-31T00:00:00Z is more than 24 h ahead of this "
                          "store's clock"), why
    # A clock 23 h ahead is within the allowance; the genuine later capture still wins.
    drop(spool, "skewed.tar.gz", _capture_at(_iso(datetime.now(UTC) + timedelta(hours=23))))
    wait_for("the skewed capture", lambda: (spool / "done" / "skewed.tar.gz").exists(), 60)
    assert "skewed.tar.gz: replaced boot" in d.text()
    batch = {"format": FORMAT, "format_version": FORMAT_VERSION, "machine_id": machine_id(7),
             "boot_id": boot_id(7, 7), "source": "kmsg", "memledger_version": "test",
             "written_at": "9999-01-01T00:00:00Z", "dropped": 0}
    drop(spool, "forged.jsonl", json.dumps(batch).encode() + b"\n")
    wait_for("the batch refusal", lambda: (spool / "failed" / "forged.jsonl.error").exists(), 60)
    assert "line 1: written_at 9999-01-01T00:00:00Z is more than 24 h ahead" in \
        (spool / "failed" / "forged.jsonl.error").read_text()
    assert d.metric('memledger_ingest_total{result="failed"}') == 3
    assert d.stop() == 0
    assert stored(db_url)[0] == {(machine_id(7), boot_id(7, 7))}


def test_a_nul_in_a_manifest_on_postgresql_goes_to_failed_at_once(tmp_path: Path,
                                                                  pg_server: object) -> None:
    db = pg_server.new_database()  # type: ignore[attr-defined]
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, db, spool)
    m = {"format": "memledger-capture", "format_version": 1, "memledger_version": "test",
         "machine_id": machine_id(4), "boot_id": boot_id(4, 1), "hostname": "web\x00",
         "captured_at": _iso(T0)}
    drop(spool, "nul.tar.gz", targz({"manifest.json": json.dumps(m).encode(), "dmesg.txt": DMESG}))
    wait_for("the refusal", lambda: (spool / "failed" / "nul.tar.gz.error").exists(), 60)
    assert d.metric('memledger_ingest_total{result="failed"}') == 1
    assert "retry in" not in d.text()
    assert d.stop() == 0


def test_which_database_errors_are_the_files_fault(pg_server: object) -> None:
    """A real PostgreSQL server's refusals: a NUL in text and a number out of range are
    permanent (the same file fails the same way); a server that is not there is not."""
    from memledger.store.db import is_permanent

    engine = make_engine(resolve_url(pg_server.new_database()), create=False)  # type: ignore[attr-defined]
    errors: dict[str, SQLAlchemyError] = {}
    with engine.connect() as conn:
        for name, stmt, params in (("nul", "SELECT CAST(:v AS text)", {"v": "a\x00b"}),
                                   ("range", "SELECT CAST(:v AS smallint)", {"v": 1 << 20})):
            with pytest.raises(SQLAlchemyError) as exc:
                conn.execute(text(stmt), params)
            errors[name] = exc.value
            conn.rollback()
    engine.dispose()
    down = make_engine(resolve_url("postgresql+psycopg://nobody@127.0.0.1:1/none"), create=False)
    with pytest.raises(SQLAlchemyError) as exc, down.connect():
        pass
    errors["down"] = exc.value
    assert {k: is_permanent(e) for k, e in errors.items()} == \
        {"nul": True, "range": True, "down": False}, {k: repr(e)[:200] for k, e in errors.items()}
