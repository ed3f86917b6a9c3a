"""Many rows into one table at once.

A capture brings up to a few hundred events, and a fleet daemon stores 64 captures in
one transaction. As an executemany, each row is a statement of its own on PostgreSQL
(psycopg pipelines them, but SQLAlchemy and psycopg still bind every row, and the
server plans and runs each): in a reboot wave that was the largest part of a fleet
daemon's time. On PostgreSQL the rows go instead through ``COPY … FROM STDIN``, its
bulk-load path, on the transaction's own connection (psycopg's ``Cursor.copy``): the
same checks as an INSERT (a value too long for its column, a NUL in a text, a missing
parent row are refused), measured at a third of the time of one ``INSERT … SELECT FROM
unnest(…)`` of arrays, itself half that of the executemany (BENCHMARKS.md, "Fleet
ingest"). SQLAlchemy has no COPY, so a driver error is turned here into the
SQLAlchemy error every caller handles, and a connection lost meanwhile is invalidated
as SQLAlchemy does for its own statements. SQLite runs an executemany, in process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.exc import DBAPIError

__all__ = ("insert_rows",)


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (each with the same keys) into ``table``, in the transaction of
    ``conn``."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), list(rows))
        return
    names = tuple(rows[0])
    statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
    raw = conn.connection.driver_connection
    assert raw is not None  # a connection in a transaction has its driver connection
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row[n] for n in names])
    except conn.dialect.loaded_dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, raw, None)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error,
                                  connection_invalidated=lost,
                                  dialect=conn.dialect) from exc
