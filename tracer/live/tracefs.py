"""The tracefs fallback: kprobe events in a ``memledger`` trace instance.

Used when bcc is not installed or cannot compile (no kernel headers). The probes of
:data:`memledger.tracer.probes.PROBES` are defined in ``kprobe_events`` (definitions are
global; their group is ``memledger``), enabled only inside ``instances/memledger``, and
read from that instance's ``trace_pipe``, so other tracing users on the host are not
disturbed. Lost entries show in the instance's ``per_cpu/cpuN/stats`` as ``overrun``.
Everything is removed again on :meth:`TracefsProbes.close`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

from memledger.tracer.ftrace import parse_trace
from memledger.tracer.probes import GROUP, Probe, ProbeHit, choose_probes, hit_from_trace

__all__ = ("TRACEFS_ROOTS", "TracefsError", "TracefsProbes", "find_tracefs")

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_OVERRUN = re.compile(r"^overrun:\s*(\d+)", re.M)


class TracefsError(Exception):
    """tracefs cannot be used; the message says why, in one line."""


def find_tracefs(candidates: tuple[str, ...] = TRACEFS_ROOTS) -> str:
    for root in candidates:
        if os.path.exists(os.path.join(root, "kprobe_events")):
            return root
    raise TracefsError(f"no tracefs with kprobe_events at {' or '.join(candidates)} "
                       "(mount -t tracefs nodev /sys/kernel/tracing; CONFIG_KPROBE_EVENTS)")


def _write(path: Path, text: str, append: bool = True) -> None:
    # tracefs control files take one write per command; O_APPEND keeps other definitions.
    flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class TracefsProbes:
    source = "tracefs"

    def __init__(self, root: str | None = None, instance: str = GROUP,
                 buffer_kb: int = 4096, probes: tuple[Probe, ...] | None = None) -> None:
        self.root = Path(root or find_tracefs())
        self.instance = self.root / "instances" / instance
        self.buffer_kb = buffer_kb
        self.requested = probes
        self.attached: list[Probe] = []
        self.missing: list[str] = []
        self.fd = -1
        self._partial = b""
        self._overrun = 0

    def _available(self) -> set[str]:
        names: set[str] = set()
        with open(self.root / "available_filter_functions", "rb") as fh:
            for line in fh:
                names.add(line.split(None, 1)[0].decode(errors="replace"))
        return names

    def open(self) -> None:
        if self.requested is not None:
            chosen, missing = list(self.requested), list[str]()
        else:
            chosen, missing = choose_probes(self._available())
        self.missing = missing
        self._remove_definitions()
        try:
            self.instance.mkdir()
        except FileExistsError:
            # A stale instance from a collector that was killed: start clean.
            self.instance.rmdir()
            self.instance.mkdir()
        for p in chosen:
            try:
                _write(self.root / "kprobe_events", p.definition + "\n")
            except OSError as exc:
                # EINVAL/ENOENT: a function that cannot be probed on this kernel (inlined,
                # notrace, or gone); the others still work.
                if exc.errno not in (errno.EINVAL, errno.ENOENT, errno.EEXIST):
                    raise
                self.missing.append(f"{p.function} ({os.strerror(exc.errno)})")
                continue
            self.attached.append(p)
        if not self.attached:
            raise TracefsError("none of the runtime probes could be defined: "
                               + ", ".join(self.missing))
        _write(self.instance / "buffer_size_kb", f"{self.buffer_kb}\n", append=False)
        for p in self.attached:
            _write(self.instance / "events" / GROUP / p.event / "enable", "1\n", append=False)
        self.fd = os.open(self.instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> tuple[list[ProbeHit], int]:
        """Hits read so far (non-blocking), and entries lost since the last call."""
        chunks: list[bytes] = [self._partial]
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        hits: list[ProbeHit] = []
        if cut:
            for e in parse_trace(data[:cut].decode(errors="replace")).events:
                if (hit := hit_from_trace(e)) is not None:
                    hits.append(hit)
        return hits, self._lost()

    def _lost(self) -> int:
        total = 0
        per_cpu = self.instance / "per_cpu"
        with contextlib.suppress(OSError):
            for cpu in per_cpu.iterdir():
                with contextlib.suppress(OSError):
                    m = _OVERRUN.search((cpu / "stats").read_text())
                    if m is not None:
                        total += int(m.group(1))
        lost, self._overrun = max(0, total - self._overrun), max(total, self._overrun)
        return lost

    def _remove_definitions(self) -> None:
        try:
            text = (self.root / "kprobe_events").read_text()
        except OSError:
            return
        for line in text.splitlines():
            name = line.split(None, 1)[0].partition(":")[2] if line.strip() else ""
            if name.startswith(f"{GROUP}/"):
                with contextlib.suppress(OSError):
                    _write(self.root / "kprobe_events", f"-:{name}\n")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.instance.exists():
            with contextlib.suppress(OSError):
                for p in self.attached:
                    _write(self.instance / "events" / GROUP / p.event / "enable", "0\n",
                           append=False)
            with contextlib.suppress(OSError):
                self.instance.rmdir()
        self._remove_definitions()
        self.attached = []
