"""A real PostgreSQL server (Debian's postgresql package) in a temporary directory.

initdb refuses to run as root, so as root the server runs as the ``postgres`` user that
the package creates. It listens on 127.0.0.1 on a free port, with trust authentication,
and each test gets a database of its own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg

__all__ = ("PgServer", "pg_bin")


def pg_bin() -> Path:
    """The newest installed server's bin directory (/usr/lib/postgresql/N/bin)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; "
                           "make test installs it as root)")
    return versions[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    USER = "memledger"

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.base = Path(tempfile.mkdtemp(prefix="memledger-pg-"))
        self.port = _free_port()
        self._demote: Callable[[], None] | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)

            def demote() -> None:
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)

            self._demote = demote
        self._n = 0

    def _run(self, *args: str) -> None:
        subprocess.run([str(self.bin / args[0]), *args[1:]], check=True, capture_output=True,
                       preexec_fn=self._demote, cwd=self.base, timeout=120)

    def start(self) -> None:
        data = self.base / "data"
        self._run("initdb", "-D", str(data), "-U", self.USER, "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        self.resume()

    def resume(self) -> None:
        """Start the server again after :meth:`pause`, on the same port and data."""
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} "
                "-c fsync=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.base / "data"), "-o", opts, "-l",
                  str(self.base / "log"), "-w", "start")

    def pause(self) -> None:
        """Stop the server, keeping its data (an outage)."""
        self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh database; its SQLAlchemy URL."""
        self._n += 1
        name = f"t{self._n}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{name}"
