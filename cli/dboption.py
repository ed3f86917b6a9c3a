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
    remove_if_empty,
    resolve_url,
    sqlite_path,
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
    become one-line failures (exit 2 for a bad location, 1 for a failing server). When the
    command fails, a SQLite store it created and left without a host is removed: a failed
    first run leaves no empty database behind."""
    try:
        url = resolve_url(db)
        path = sqlite_path(url)
        new = create and path is not None and not path.exists()
        engine = make_engine(url, create=create)
    except StoreError as exc:
        fail(str(exc))
    ok = False
    try:
        if create:
            upgrade(engine)
        yield engine
        ok = True
    except StoreError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"{engine.url.render_as_string(hide_password=True)}: {describe_error(engine.url, exc)}", 1)
    except SystemExit as exc:
        ok = exc.code in (0, None)
        raise
    finally:
        engine.dispose()
        if new and not ok:
            remove_if_empty(url)
