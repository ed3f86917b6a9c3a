"""Run the real ``memledger daemon`` as a subprocess and watch what it does."""

from __future__ import annotations

import atexit
import os
import re
import resource
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from conftest import MEMLEDGER

__all__ = ("Daemon", "drop", "wait_for")

_STARTED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_leftovers() -> None:
    """A test that failed before stopping its daemon leaves no daemon behind."""
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()


def wait_for(what: str, pred: Callable[[], bool], timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def drop(spool: Path, name: str, data: bytes, atomic: bool = True) -> None:
    """Put a file into the spool as a producer would: rename-into, or write-and-close."""
    if atomic:
        tmp = spool / f".{name}.tmp-test"
        tmp.write_bytes(data)
        os.rename(tmp, spool / name)
    else:
        (spool / name).write_bytes(data)


class Daemon:
    def __init__(self, tmp: Path, db: str, spool: Path, *extra: str,
                 env: dict[str, str] | None = None, capture_self: bool = False,
                 nofile: int | None = None) -> None:
        """``nofile``: the daemon's descriptor limit (RLIMIT_NOFILE), else inherited."""
        self.log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
        args = [MEMLEDGER, "daemon", "--db", db, "--spool", str(spool),
                "--web.listen-address", "127.0.0.1:0", *extra]
        if not capture_self:
            args.append("--no-capture-self")
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, preexec_fn=limit)
        _STARTED.append(self.proc)
        self.address = ""
        wait_for("the daemon to serve HTTP", self._serving, 60)

    def _serving(self) -> bool:
        m = re.search(r"serving https?://(\S+?)(/\S*)\n", self.text())
        if m:
            self.address = m.group(1)
            return True
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.text()}")
        return False

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=10) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode()

    def metric(self, line_prefix: str) -> float:
        for line in self.get("/metrics")[2].splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no sample {line_prefix}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self.log.close()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.log.close()
        return code
