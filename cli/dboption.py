"""``--db`` and opening the store it names: shared by every command that reads or writes
the store, and kept apart so that read-only commands do not import the ingest path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from memledger.cli.errors import fail
from memledger.store.db import (
    StoreError,
    describe_error,
    make_engine,
    resolve_url,
)
from memledger.store.migrate import upgrade
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

__all__ = ("DB_OPTION", "open_store")

DB_OPTION = click.option(
    "--db", envvar="MEMLEDGER_DB", show_envvar=True, metavar="URL|PATH",
    help="SQLAlchemy URL (sqlite:///…, postgresql+psycopg://user@host/db) or a SQLite file. "
         "Default: $STATE_DIRECTORY/memledger.db under systemd, /var/lib/memledger/memledger.db "
         "for root, else $XDG_STATE_HOME/memledger/memledger.db.")


@contextmanager
def open_store(db: str | None, *, create: bool) -> Iterator[Engine]:
    """The engine for ``--db``, migrated when ``create``; StoreError and database errors
    become one-line failures (exit 2 for a bad location, 1 for a failing server). A store
    is never removed here, even one this command made and left empty: another process
    (a daemon started meanwhile) may be using it. A command that may store nothing opens
    the store only once it has something to store (``ingest``)."""
    try:
        engine = make_engine(resolve_url(db), create=create)
    except StoreError as exc:
        fail(str(exc))
    try:
        if create:
            upgrade(engine)
        yield engine
    except StoreError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"{engine.url.render_as_string(hide_password=True)}: {describe_error(engine.url, exc)}", 1)
    finally:
        engine.dispose()
