"""Where the database is, and opening it: SQLite by default, any SQLAlchemy URL with --db.

Every SQLite connection gets the pragmas a daemon needs: WAL, synchronous=
NORMAL, a busy timeout and foreign keys. pysqlite's own transaction handling is switched
off so that writers can start with ``BEGIN IMMEDIATE`` and never deadlock on a lock
upgrade (SQLAlchemy's "pysqlite serializable isolation" recipe). PostgreSQL
(``postgresql+psycopg://…``) is the central fleet store.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)

__all__ = (
    "BUSY_TIMEOUT_MS",
    "CONNECT_TIMEOUT_S",
    "DB_FILE",
    "StoreError",
    "as_utc",
    "default_db_path",
    "describe_error",
    "display_url",
    "is_permanent",
    "iso_utc",
    "make_engine",
    "resolve_url",
    "sqlite_path",
    "writer",
)

DB_FILE = "memledger.db"
BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10
_BEGIN = "memledger_begin"


class StoreError(Exception):
    """The database cannot be used; the message is one line."""


def as_utc(when: datetime) -> datetime:
    """The store writes UTC only; SQLite gives the times back without a zone."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def iso_utc(when: datetime | None) -> str | None:
    """A stored time as reports write it: 2026-12-05T18:42:09Z (None stays None)."""
    return None if when is None else as_utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_db_path(env: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """``$STATE_DIRECTORY/memledger.db`` under systemd, ``/var/lib/memledger`` for root,
    else the XDG state directory (``$XDG_STATE_HOME``, ``~/.local/state``)."""
    env = os.environ if env is None else env
    uid = os.geteuid() if uid is None else uid
    state = env.get("STATE_DIRECTORY")
    if state:
        # systemd passes one path per StateDirectory= entry, colon-separated.
        return Path(state.split(":")[0]) / DB_FILE
    if uid == 0:
        return Path("/var/lib/memledger") / DB_FILE
    xdg = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/state")
    return Path(xdg) / "memledger" / DB_FILE


def resolve_url(db: str | None) -> URL:
    """``--db``: a SQLAlchemy URL, or a file path meaning SQLite; None for the default."""
    if not db:
        return URL.create("sqlite", database=str(default_db_path()))
    if "://" not in db:
        return URL.create("sqlite", database=str(Path(db).absolute()))
    try:
        return make_url(db)
    except ArgumentError:
        raise StoreError(f"--db {db!r}: not a database URL") from None


def describe_error(url: URL, exc: BaseException) -> str:
    """One line for a database error. SQLite reports a full disk as "database or disk is
    full" while writing but as "disk I/O error" when it cannot even create its -wal or
    -journal file; in both cases the line says which file system has no room left."""
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).splitlines() or [type(orig).__name__])[0]
    path = sqlite_path(url)
    if path is not None:
        try:
            full = os.statvfs(path.parent).f_bavail == 0
        except OSError:
            full = False
        if full:
            text += f" (no space left on the file system of {path.parent})"
    return text


def is_permanent(exc: SQLAlchemyError) -> bool:
    """True when a database error is about the values written, so that writing the same
    file again fails the same way: the server refused a value (DataError: a NUL in text,
    a number out of range, bad encoding), a constraint refused a row (IntegrityError), or
    the driver could not even send a value (a StatementError that is not the server's).
    Everything else (OperationalError: the server is down, restarting, out of disk or
    connections; a lock or a timeout; a schema that is not there) is about the database,
    and the file waits for it."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL (None for other backends and in-memory SQLite)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database or "")


def display_url(url: URL) -> str:
    """The URL without its password, for messages and the landing page."""
    return url.render_as_string(hide_password=True)


def _to_wal(cur: Any) -> None:
    """Switch a database to WAL, waiting for other writers as long as any lock waits.

    The switch reads the header under a shared lock and then needs the write lock. While a
    second connection still in rollback mode holds a RESERVED lock (a new store, whose first
    writers race), SQLite returns SQLITE_BUSY at once instead of calling the busy handler,
    since waiting with a shared lock held could deadlock. The statement holds no lock when it
    fails, so it is tried again until the busy timeout has passed. A database already in WAL
    (every one after its first connection) is not switched at all."""
    if cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_begin)
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _to_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: URL, *, create: bool = True) -> Engine:
    """An engine for ``url``. For SQLite, ``create`` makes the parent directory; without
    it a missing file is a :class:`StoreError`."""
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"{display_url(url)}: memledger stores in SQLite (a file, or "
                         f"sqlite:///PATH) or PostgreSQL (postgresql+psycopg://…), not {backend}")
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.exists():
            raise StoreError(f"{path}: no memledger database here (the daemon or "
                             "`memledger ingest` creates it; --db names another)")
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            except OSError as exc:
                raise StoreError(f"{path.parent}: {os.strerror(exc.errno or 0)}") from None
    try:
        if backend == "sqlite":
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            # A server that does not answer (a host that drops packets) fails the connection
            # after this long instead of the kernel's TCP timeout (about two minutes): the
            # daemon says why and serves its metrics meanwhile. The URL's own wins.
            args = {} if "connect_timeout" in url.query else {"connect_timeout": CONNECT_TIMEOUT_S}
            engine = create_engine(url, pool_pre_ping=True, connect_args=args)
    except ImportError as exc:
        hint = ("; memledger installs psycopg 3: postgresql+psycopg://…"
                if backend == "postgresql" else "")
        raise StoreError(f"{display_url(url)}: {exc}{hint}") from None
    except ArgumentError as exc:
        raise StoreError(f"{display_url(url)}: {exc}") from None
    return engine


def writer(engine: Engine) -> Connection:
    """A connection whose transactions take SQLite's write lock at BEGIN."""
    return engine.connect().execution_options(**{_BEGIN: "IMMEDIATE"})
