"""Row helpers shared by the writers: a dialect's INSERT … ON CONFLICT, and the host row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from memledger.store.schema import hosts
from sqlalchemy import Connection, select, update

__all__ = ("dialect_insert", "upsert_host")


def dialect_insert(conn: Connection) -> Any:
    """The dialect's ``insert`` (it has ``on_conflict_do_nothing``). Imported here: the
    postgresql dialect package brings asyncio and asyncpg's connector (30 ms)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def upsert_host(conn: Connection, machine_id: str, hostname: str | None, now: datetime) -> int:
    """The host's primary key, creating the row when new; ``last_seen`` becomes ``now``."""
    conn.execute(dialect_insert(conn)(hosts).values(
        machine_id=machine_id, hostname=hostname, first_seen=now, last_seen=now,
    ).on_conflict_do_nothing(index_elements=["machine_id"]))
    pk: int = conn.execute(select(hosts.c.id).where(hosts.c.machine_id == machine_id)).scalar_one()
    values: dict[str, Any] = {"last_seen": now}
    if hostname:
        values["hostname"] = hostname
    conn.execute(update(hosts).where(hosts.c.id == pk).values(**values))
    return pk
