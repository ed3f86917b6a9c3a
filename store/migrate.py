"""Bring a database to the current schema with Alembic (``migrations/``).

Several daemons may start at once against one PostgreSQL: the upgrade runs under a
transaction-level advisory lock, and on SQLite under ``BEGIN IMMEDIATE``, so exactly one
of them migrates and the others find the schema current.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from memledger.store.db import StoreError, display_url, writer
from sqlalchemy import Connection, Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ("HEAD", "SchemaState", "current_revision", "downgrade", "head_revision",
           "known_revisions", "schema_state", "upgrade")

SchemaState = Literal["empty", "behind", "current", "newer"]

# The newest revision in migrations/versions (a test checks it against Alembic's own
# answer): with it, a command that finds the schema current never imports Alembic, a
# tenth of a second of start-up for `compare` and the other readers.
HEAD = "0008"
# pg_advisory_xact_lock key: "memledger" as a 64-bit number.
_PG_LOCK = 0x6D656D6C6564676


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "memledger.store:migrations")
    return cfg


def head_revision() -> str | None:
    """The newest revision, as Alembic reads it from the migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def known_revisions() -> frozenset[str]:
    """Every revision of this memledger's migration scripts."""
    from alembic.script import ScriptDirectory

    return frozenset(s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions())


def schema_state(engine: Engine) -> SchemaState:
    """The database's schema against this memledger's: ``empty`` (no revision), ``current``
    (:data:`HEAD`), ``behind`` (an older revision: :func:`upgrade` brings it to head) or
    ``newer`` (a revision none of this memledger's scripts has: a newer memledger wrote it)."""
    rev = current_revision(engine)
    if rev is None:
        return "empty"
    if rev == HEAD:
        return "current"
    return "behind" if rev in known_revisions() else "newer"


def current_revision(engine: Engine) -> str | None:
    """The database's revision (alembic_version), or None for an empty database."""
    with engine.connect() as conn:
        rev = None
        if inspect(conn).has_table("alembic_version"):
            rev = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        conn.rollback()
    return rev


def upgrade(engine: Engine, target: str = "head") -> None:
    """Create or upgrade the schema to the newest revision (or ``target``); a no-op when
    it is current."""
    head = HEAD if target == "head" else target
    if current_revision(engine) == head:
        return
    _migrate(engine, "upgrade", target)


def downgrade(engine: Engine, target: str) -> None:
    """Take the schema back to ``target`` (for tests of a revision: memledger itself only
    ever upgrades)."""
    _migrate(engine, "downgrade", target)


def _migrate(engine: Engine, direction: Literal["upgrade", "downgrade"], target: str) -> None:
    from alembic.util.exc import CommandError

    try:
        with writer(engine) as conn:
            if conn.dialect.name == "sqlite":
                # A revision that copies a table (SQLite cannot drop a constraint in place)
                # drops the old one; with foreign keys on, that would delete the rows that
                # refer to it. The pragma is a no-op inside a transaction: set it before.
                conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
                    "PRAGMA foreign_keys=OFF")
            try:
                _migrate_in(conn, direction, target)
            finally:
                if conn.dialect.name == "sqlite":
                    conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
                        "PRAGMA foreign_keys=ON")
    except CommandError as exc:
        raise StoreError(f"{display_url(engine.url)}: cannot {direction} the schema to "
                         f"{target} ({exc}); is the database from a newer memledger?") from None


def _migrate_in(conn: Connection, direction: Literal["upgrade", "downgrade"],
                target: str) -> None:
    """Run the migrations in one transaction on ``conn``; on SQLite, refuse to commit a
    copy that left a row pointing at nothing."""
    from alembic import command

    cfg = _config()
    with conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK})")
        cfg.attributes["connection"] = conn
        getattr(command, direction)(cfg, target)
        if conn.dialect.name == "sqlite":
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
            if broken is not None:
                raise StoreError(f"{display_url(conn.engine.url)}: the schema {direction} left "
                                 f"{broken[0]} row {broken[1]} pointing at no {broken[2]} row; "
                                 "nothing was changed")
