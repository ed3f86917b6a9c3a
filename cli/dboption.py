"""``--db`` and opening the store it names: shared by every command that reads or writes
the store, and kept apart so that read-only commands do not import the ingest path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from memledger.cli.errors import fail, say
from memledger.store.db import (
    StoreError,
    describe_error,
    make_engine,
    resolve_url,
)
from memledger.store.migrate import HEAD, current_revision, schema_state, upgrade
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

__all__ = ("DB_OPTION", "open_store", "use_schema")

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
            use_schema(engine, write=True)
        yield engine
    except StoreError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"{engine.url.render_as_string(hide_password=True)}: {describe_error(engine.url, exc)}", 1)
    finally:
        engine.dispose()


def use_schema(engine: Engine, *, write: bool) -> None:
    """Make ready to use a store whose schema may not be this memledger's.

    The schema has one owner. An empty store is created, and a SQLite file (one host's own
    store) is migrated; a shared PostgreSQL store of an older schema is left to its owner
    (`memledger db upgrade`, or a fleet daemon at its start), and this command stops with
    one line saying so (exit 2). A store of a newer schema (a later memledger migrated it)
    is read with a warning, since migrations add to the schema, and never written."""
    state = schema_state(engine)
    if state == "current":
        return
    url = engine.url.render_as_string(hide_password=True)
    if state == "newer":
        rev = current_revision(engine)
        if write:
            fail(f"{url}: the store's schema {rev} is newer than this memledger's {HEAD}: "
                 "upgrade memledger to write to it")
        say(f"memledger: warning: {url}: the store's schema {rev} is newer than this "
            f"memledger's {HEAD}; reading what this version knows of it")
        return
    if state == "behind" and engine.url.get_backend_name() != "sqlite":
        fail(f"{url}: the store's schema is {current_revision(engine)}, this memledger needs "
             f"{HEAD}; a shared store is migrated by its owner: run `memledger db upgrade` "
             "(or start a fleet daemon of this version)")
    upgrade(engine)
