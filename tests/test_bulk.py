"""Many rows at once (store/bulk.py): what goes in comes back, on both backends; the
database checks each value as it checks a row inserted alone, and its errors are the
SQLAlchemy errors every writer handles."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from memledger.store.bulk import insert_rows
from memledger.store.db import is_permanent, make_engine, resolve_url, writer
from memledger.store.migrate import upgrade
from memledger.store.rows import HostKey, upsert_host
from memledger.store.schema import boots, events
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

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
                 caller="efi_free_boot_services+0x1f/0x30", flags=4,
                 detail="ä \\ \"q\" {,} \t tab \n line \\N \r"),
            _row(pk, 2, source="ftrace", function="x" * 1024, detail="")]
    with writer(engine) as conn, conn.begin():
        insert_rows(conn, events, rows)
        insert_rows(conn, events, [])
    with engine.connect() as conn:
        got = [dict(r._mapping) for r in conn.execute(
            select(*(events.c[k] for k in rows[0])).order_by(events.c.seq))]
    assert got == rows


@pytest.mark.parametrize("bad", [{"source": "s" * 17}, {"detail": "a\0b"},
                                 {"boot_pk": 10**9}])
def test_a_row_the_database_refuses_is_its_data_error_and_nothing_is_written(
        pg_server: Any, bad: dict[str, Any]) -> None:
    """PostgreSQL only: SQLite keeps no VARCHAR length (TEXT affinity). Each is a
    permanent error (store/db.py is_permanent): the daemon refuses the capture."""
    engine = _engine(str(pg_server.new_database()))
    pk = _boot(engine)
    with pytest.raises(DBAPIError) as caught, writer(engine) as conn, conn.begin():
        insert_rows(conn, events, [_row(pk, 0), {**_row(pk, 1), **bad}])
    assert isinstance(caught.value, DataError | IntegrityError)
    assert is_permanent(caught.value)
    with engine.connect() as conn:
        assert conn.execute(select(events.c.id)).all() == []
    engine.dispose()


def test_a_connection_lost_in_the_middle_is_an_operational_error_and_the_next_one_works(
        pg_server: Any) -> None:
    engine = _engine(str(pg_server.new_database()))
    pk = _boot(engine)
    with pytest.raises(OperationalError) as caught, writer(engine) as conn, conn.begin():
        with engine.connect() as other:   # the server ends this transaction's session
            other.execute(text("SELECT pg_terminate_backend(:pid)"),
                          {"pid": conn.connection.driver_connection.info.backend_pid})
        insert_rows(conn, events, [_row(pk, 0)])
    assert caught.value.connection_invalidated
    assert not is_permanent(caught.value)
    with writer(engine) as conn, conn.begin():
        insert_rows(conn, events, [_row(pk, 0)])
    with engine.connect() as conn:
        assert conn.execute(select(events.c.seq)).scalars().all() == [0]
    engine.dispose()
