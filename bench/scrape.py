"""The daemon under load: a real ``memledger daemon`` process, /metrics under ``wrk``, and
the process's footprint read from /proc."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ("DaemonProc", "Samples", "cpu_seconds", "rss_bytes", "samples", "wrk")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_TICK = os.sysconf("SC_CLK_TCK")


class DaemonProc:
    """``memledger daemon`` on a free loopback port, optionally under GNU time."""

    def __init__(self, memledger: str, log: Path, *args: str, timed: bool = False) -> None:
        cmd = [memledger, "daemon", "--web.listen-address", "127.0.0.1:0", *args]
        if timed:
            cmd = ["/usr/bin/time", "-v", *cmd]
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.address = ""
        end = time.monotonic() + 60
        while not (m := re.search(r"serving https?://(\S+?)/\S*\n", log.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise SystemExit(f"bench: the daemon did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.address = m.group(1)
        # Under GNU time the daemon is its child.
        self.pid = self.proc.pid if not timed else _only_child(self.proc.pid)

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> str:
        """SIGTERM, wait, and the log (GNU time's report is at its end)."""
        if self.proc.poll() is None:
            os.kill(self.pid if self.address else self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.log_path.read_text(errors="replace")


def _only_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise SystemExit(f"bench: expected one child of {pid}, found {children}")
    return int(children[0])


def samples(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=60) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def wrk(url: str, connections: int, seconds: int) -> dict[str, Any]:
    """p50, p99 (milliseconds) and requests/s from ``wrk --latency``."""
    proc = subprocess.run(["wrk", "-t", str(min(connections, 2)), "-c", str(connections),
                           "-d", f"{seconds}s", "--latency", url],
                          capture_output=True, text=True, check=True)
    out: dict[str, Any] = {"connections": connections, "seconds": seconds}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", proc.stdout, re.M)
        if m is None:
            raise SystemExit(f"bench: no {pct}% line in wrk's output:\n{proc.stdout}")
        out[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"^Requests/sec:\s+([\d.]+)", proc.stdout, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", proc.stdout)
    out["requests_per_s"] = float(m.group(1)) if m else None
    out["non_2xx"] = int(errors.group(1)) if errors else 0
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (its peak) from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out
