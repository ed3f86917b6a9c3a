"""Row helpers shared by the writers: a dialect's INSERT … ON CONFLICT, and host rows.

A host is (machine id, sender, hardware) (migration 0007): clones of one disk image share a
machine id, and are told apart by who sent their captures to a fleet daemon and by the
digest of their DMI product UUID and serial. A capture that cannot show its hardware (one
taken as a user other than root) belongs to the one host of its machine id and sender;
the first capture that shows it gives that host its hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from memledger.store.schema import hosts
from sqlalchemy import Connection, bindparam, insert, select, text, update

__all__ = ("HostKey", "dialect_insert", "host_pks", "upsert_host")

# pg_advisory_xact_lock(namespace, hashtext(machine id)): writers that may add a host of
# one machine id take turns ("mldg").
_PG_HOST_LOCK = 0x6D6C6467
# Every machine id of a batch in one statement, in the order given (sorted: writers take
# the locks in one order, so they never wait for each other in a circle). unnest yields
# the array in its order, and a volatile function in the target list is evaluated row by
# row as the rows come.
_PG_LOCK_HOSTS = text("SELECT count(pg_advisory_xact_lock(:ns, hashtext(m))) "
                      "FROM unnest(CAST(:mids AS text[])) AS m")


@dataclass(frozen=True, order=True, slots=True)
class HostKey:
    machine_id: str
    sender: str = ""
    hardware: str = ""


def dialect_insert(conn: Connection) -> Any:
    """The dialect's ``insert`` (it has ``on_conflict_do_nothing``). Imported here: the
    postgresql dialect package brings asyncio and asyncpg's connector (30 ms)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def host_pks(conn: Connection, names: Mapping[HostKey, str | None],
             now: datetime) -> dict[HostKey, int]:
    """Each key's host row (``names``: key → the host name for a new row), created when new;
    ``last_seen`` becomes ``now``. Keys without hardware sort first, so a batch holding a
    machine's captures with and without it makes one host."""
    mids = sorted({k.machine_id for k in names})
    if conn.dialect.name == "postgresql":  # SQLite writers hold the database's write lock
        conn.execute(_PG_LOCK_HOSTS, {"ns": _PG_HOST_LOCK, "mids": mids})
    known: dict[tuple[str, str], list[tuple[str, int]]] = {}
    # Locked (on PostgreSQL; a SQLite writer holds the whole database): a prune that would
    # remove one of these hosts as empty waits, and then finds it seen now.
    for r in conn.execute(select(hosts.c.id, hosts.c.machine_id, hosts.c.sender, hosts.c.hardware)
                          .where(hosts.c.machine_id.in_(mids)).order_by(hosts.c.id)
                          .with_for_update()):
        known.setdefault((r.machine_id, r.sender), []).append((r.hardware, r.id))
    out: dict[HostKey, int] = {}
    for key in sorted(names):
        rows = known.setdefault((key.machine_id, key.sender), [])
        exact = [pk for hw, pk in rows if hw == key.hardware]
        if exact:
            out[key] = exact[0]
        elif not key.hardware and len(rows) == 1:
            out[key] = rows[0][1]  # its one host, whose hardware this capture cannot see
        elif key.hardware and len(rows) == 1 and not rows[0][0]:
            pk = rows[0][1]  # the first capture that shows this host's hardware
            conn.execute(update(hosts).where(hosts.c.id == pk).values(hardware=key.hardware))
            rows[0] = (key.hardware, pk)
            out[key] = pk
        else:
            pk = conn.execute(insert(hosts).values(
                machine_id=key.machine_id, sender=key.sender, hardware=key.hardware,
                hostname=names[key], first_seen=now, last_seen=now).returning(hosts.c.id)
            ).scalar_one()
            rows.append((key.hardware, pk))
            out[key] = pk
    ids = sorted(set(out.values()))
    conn.execute(update(hosts).where(hosts.c.id == bindparam("b_id")).values(last_seen=now),
                 [{"b_id": pk} for pk in ids])
    return out


def upsert_host(conn: Connection, key: HostKey, hostname: str | None, now: datetime) -> int:
    """The host's primary key, creating the row when new; ``last_seen`` becomes ``now``,
    and a host name given becomes its name."""
    pk = host_pks(conn, {key: hostname}, now)[key]
    if hostname:
        conn.execute(update(hosts).where(hosts.c.id == pk).values(hostname=hostname))
    return pk
