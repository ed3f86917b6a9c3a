"""Many rows in one statement (store/bulk.py): what goes in comes back, on both backends,
and the database checks each value as it checks a row inserted alone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from memledger.store.bulk import insert_rows
from memledger.store.db import make_engine, resolve_url, writer
from memledger.store.migrate import upgrade
from memledger.store.rows import HostKey, upsert_host
from memledger.store.schema import boots, events
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import DataError

_NOW = datetime(2026, 12, 5, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = _engine(db_url)
    yield eng
    eng.dispose()


def _engine(url: str) -> Engine:
    eng = make_engine(resolve_url(url))
    upgrade(eng)
    return eng


def _boot(engine: Engine) -> int:
    with writer(engine) as conn, conn.begin():
        host = upsert_host(conn, HostKey("0" * 32, ""), "h", _NOW)
        return int(conn.execute(insert(boots).values(host_id=host, boot_id="b", ingested_at=_NOW)
                                .returning(boots.c.id)).scalar_one())


def _row(boot_pk: int, seq: int, **values: Any) -> dict[str, Any]:
    return {"boot_pk": boot_pk, "seq": seq, "source": "memblock", "ts": None,
            "function": "memblock_free", "phys_start": None, "phys_end": None, "size": None,
            "caller": None, "flags": None, "detail": None, **values}


def test_rows_come_back_as_they_went_in(engine: Engine) -> None:
    pk = _boot(engine)
    rows = [_row(pk, 0),   # every nullable column null
            _row(pk, 1, ts=0.5, phys_start=0, phys_end=(1 << 63) - 1, size=1 << 40,
                 caller="efi_free_boot_services+0x1f/0x30", flags=4, detail="ä \\ \"q\" {,}"),
            _row(pk, 2, source="ftrace", function="x" * 1024, detail="")]
    with writer(engine) as conn, conn.begin():
        insert_rows(conn, events, rows)
        insert_rows(conn, events, [])
    with engine.connect() as conn:
        got = [dict(r._mapping) for r in conn.execute(
            select(*(events.c[k] for k in rows[0])).order_by(events.c.seq))]
    assert got == rows


def test_a_value_too_long_for_its_column_is_refused_and_nothing_is_written(
        pg_server: Any) -> None:
    """PostgreSQL only: SQLite keeps no VARCHAR length (TEXT affinity)."""
    engine = _engine(str(pg_server.new_database()))
    pk = _boot(engine)
    with pytest.raises(DataError), writer(engine) as conn, conn.begin():
        insert_rows(conn, events, [_row(pk, 0), _row(pk, 1, source="s" * 17)])
    with engine.connect() as conn:
        assert conn.execute(select(events.c.id)).all() == []
    engine.dispose()
