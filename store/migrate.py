"""Bring a database to the current schema with Alembic (``migrations/``).

Several daemons may start at once against one PostgreSQL: the upgrade runs under a
transaction-level advisory lock, and on SQLite under ``BEGIN IMMEDIATE``, so exactly one
of them migrates and the others find the schema current.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from memledger.store.db import StoreError, display_url, writer
from sqlalchemy import Engine

__all__ = ("current_revision", "head_revision", "upgrade")

# pg_advisory_xact_lock key: "memledger" as a 64-bit number.
_PG_LOCK = 0x6D656D6C6564676


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "memledger.store:migrations")
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
    return rev


def upgrade(engine: Engine) -> None:
    """Create or upgrade the schema to the newest revision; a no-op when it is current."""
    head = head_revision()
    if current_revision(engine) == head:
        return
    cfg = _config()
    try:
        with writer(engine) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK})")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except CommandError as exc:
        raise StoreError(f"{display_url(engine.url)}: cannot upgrade the schema to {head} "
                         f"({exc}); is the database from a newer memledger?") from None
