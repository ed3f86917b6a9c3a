"""Many rows into one table in one statement.

A capture brings up to a few hundred events, and a fleet daemon stores 64 captures in
one transaction. As an executemany, each row is a statement of its own on PostgreSQL
(psycopg pipelines them, but SQLAlchemy and psycopg still bind every row, and the
server runs each): in a reboot wave that was the largest part of a fleet daemon's
time. On PostgreSQL the rows go instead as one array per column into one
``INSERT … SELECT … FROM unnest(…)``, the usual idiom for a bulk insert through a
driver: one statement, the same checks (a value too long for its column is refused
as it would be row by row), and inside the caller's transaction. SQLite runs an
executemany, which it does in process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import TextClause

__all__ = ("insert_rows",)

_STATEMENTS: dict[tuple[str, tuple[str, ...]], TextClause] = {}


def _unnest(table: Table, names: tuple[str, ...]) -> TextClause:
    """INSERT INTO table (names) SELECT * FROM unnest(one typed array per column)."""
    key = (table.name, names)
    if key not in _STATEMENTS:
        dialect = postgresql.dialect()
        arrays = ", ".join(
            f"CAST(:{n} AS {table.c[n].type.compile(dialect=dialect).split('(')[0]}[])"
            for n in names)
        _STATEMENTS[key] = text(f"INSERT INTO {table.name} ({', '.join(names)}) "
                                f"SELECT * FROM unnest({arrays})")
    return _STATEMENTS[key]


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (each with the same keys) into ``table``."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), list(rows))
        return
    names = tuple(rows[0])
    conn.execute(_unnest(table, names), {n: [r[n] for r in rows] for n in names})
