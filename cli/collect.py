"""``memledger collect``: watch the running kernel and hand what it sees to the daemon.

The collector is the only privileged part of memledger (CAP_BPF, CAP_PERFMON and
CAP_SYSLOG; CAP_SYS_ADMIN before v5.8). It writes nothing but files in the daemon's
spool, and the daemon, which holds no capabilities, stores them:

1. it reads the kernel log to its end (those records are the boot's; remembered by
   sequence number) and writes a capture of this boot into the spool;
2. it attaches the runtime probes, through bcc when it can and a tracefs instance when
   it cannot (``--backend auto``), and follows /dev/kmsg from where step 1 ended;
3. every ``--flush-interval`` it writes what arrived as event batches, one per source,
   including how many records each source lost.

The last kernel-log sequence number handed over is kept in ``--state-dir``, so a
restarted collector neither repeats nor skips records of the same boot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Literal

import click
from memledger.cli.errors import fail
from memledger.cli.units import parse_duration
from memledger.exporters.logs import setup_logging
from memledger.exporters.notify import Notifier
from memledger.spool.writer import SpoolWriter
from memledger.store.files import atomic_write
from memledger.tracer.capture import CaptureError, normalise_boot_id, normalise_machine_id, record
from memledger.tracer.kmsg import memory_event
from memledger.tracer.live.bcc import BccError, BccProbes
from memledger.tracer.live.kmsgfollow import KmsgFollower
from memledger.tracer.live.tracefs import TracefsError, TracefsProbes
from memledger.tracer.probes import Assembler, ProbeHit
from memledger.tracer.reader import FsTree
from memledger.tracer.runtime import BatchHeader, RuntimeEvent

__all__ = ("CollectConfig", "Collector", "collect")

VERSION = version("memledger")
Backend = Literal["auto", "bcc", "tracefs", "none"]
log = logging.getLogger("memledger.collect")


@dataclass
class CollectConfig:
    spool: str
    root: str = "/"
    backend: Backend = "auto"
    kmsg: bool = True
    capture: bool = True
    flush_s: float = 5.0
    duration_s: float | None = None
    tracefs: str | None = None
    state_dir: str | None = None


def _read(root: str, rel: str) -> str | None:
    try:
        return (Path(root) / rel).read_text().strip() or None
    except OSError:
        return None


def identity(root: str) -> BatchHeader:
    """Who and which boot the batches are about, from ``root``."""
    machine = _read(root, "etc/machine-id")
    boot = _read(root, "proc/sys/kernel/random/boot_id")
    if machine is None or boot is None:
        raise CaptureError(f"{root}: etc/machine-id or proc/sys/kernel/random/boot_id is missing")
    return BatchHeader(normalise_machine_id(machine), normalise_boot_id(boot), "kmsg", VERSION,
                       datetime.now(UTC), _read(root, "proc/sys/kernel/hostname"),
                       _read(root, "proc/sys/kernel/osrelease"))


@dataclass
class Collector:
    cfg: CollectConfig
    notifier: Notifier = field(default_factory=Notifier)
    stopping: bool = False
    _saved: int | None = None

    def _on_term(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s: flushing, then exiting", signal.Signals(signum).name)
        self.stopping = True

    # -- kernel log ---------------------------------------------------------------------

    def _state_file(self) -> Path | None:
        return Path(self.cfg.state_dir) / "kmsg.json" if self.cfg.state_dir else None

    def _resume_seq(self, boot_id: str) -> int | None:
        path = self._state_file()
        if path is None:
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(state, dict) and state.get("boot_id") == boot_id and \
                isinstance(state.get("seq"), int):
            return int(state["seq"])
        return None

    def _save_seq(self, boot_id: str, seq: int | None) -> None:
        path = self._state_file()
        if path is None or seq is None or seq == self._saved:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(str(path), json.dumps({"boot_id": boot_id, "seq": seq}).encode() + b"\n",
                         0o600)
            self._saved = seq
        except OSError as exc:
            log.warning("%s: cannot save the kernel-log position: %s", path, exc)

    # -- probes -------------------------------------------------------------------------

    def _open_probes(self) -> BccProbes | TracefsProbes | None:
        order: list[str] = {"auto": ["bcc", "tracefs"], "bcc": ["bcc"], "tracefs": ["tracefs"],
                            "none": []}[self.cfg.backend]
        reasons: list[str] = []
        for name in order:
            probes: BccProbes | TracefsProbes
            try:
                probes = BccProbes() if name == "bcc" else TracefsProbes(self.cfg.tracefs)
                probes.open()
            except (BccError, TracefsError, OSError) as exc:
                reasons.append(f"{name}: {exc}")
                log.warning("%s back end unavailable: %s", name, exc)
                continue
            attached = sorted({p.function for p in probes.attached})
            how = f" ({probes.mode})" if isinstance(probes, BccProbes) else ""
            log.info("%s back end%s: probing %s%s", name, how, ", ".join(attached),
                     f"; not probed: {', '.join(probes.missing)}" if probes.missing else "")
            return probes
        if order:
            raise click.ClickException("no runtime back end works: " + "; ".join(reasons))
        return None

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        os.makedirs(self.cfg.spool, exist_ok=True)
        head = identity(self.cfg.root)
        writer = SpoolWriter(self.cfg.spool, head)
        follower: KmsgFollower | None = None
        if self.cfg.kmsg:
            resume = self._resume_seq(head.boot_id)
            follower = KmsgFollower(os.path.join(self.cfg.root, "dev/kmsg"), resume)
            if resume is None:
                boot_log, _ = follower.read(limit=10_000_000)  # the boot's own records
                log.info("kernel log: %d records at start, up to seq %s; following from there",
                         len(boot_log), follower.last_seq())
            else:
                log.info("kernel log: resuming after seq %d", resume)
            self._save_seq(head.boot_id, follower.last_seq())
        if self.cfg.capture:
            data, manifest = record(FsTree(self.cfg.root), self.cfg.root, memledger_version=VERSION,
                                    captured_at=datetime.now(UTC))
            name = writer.capture(f"{manifest.machine_id}-{manifest.boot_id}.tar.gz", data)
            log.info("this boot: captured %s (%d bytes) into %s", manifest.boot_id, len(data),
                     os.path.join(self.cfg.spool, name))
        probes = self._open_probes()
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        status = (f"{probes.source if probes else 'no'} probes, "
                  f"{'following' if follower else 'not following'} /dev/kmsg")
        self.notifier.notify("READY=1", f"STATUS={status}")
        asm = Assembler()
        pending: dict[str, list[RuntimeEvent]] = {"bcc": [], "tracefs": [], "kmsg": []}
        lost: dict[str, int] = {"bcc": 0, "tracefs": 0, "kmsg": 0}
        deadline = None if self.cfg.duration_s is None else time.monotonic() + self.cfg.duration_s
        next_flush = time.monotonic() + self.cfg.flush_s
        next_dog = 0.0
        try:
            while True:
                now = time.monotonic()
                final = self.stopping or (deadline is not None and now >= deadline)
                wait = 0.0 if final else max(0.0, min(next_flush, deadline or next_flush) - now)
                if self.notifier.watchdog_interval is not None:
                    wait = min(wait, max(0.0, next_dog - now))
                hits: list[ProbeHit] = []
                if isinstance(probes, BccProbes):
                    got, n = probes.read(int(min(wait, 1.0) * 1000))
                    hits += got
                    lost["bcc"] += n
                else:
                    fds = [f for f in (probes, follower) if f is not None]
                    if fds and wait > 0:
                        with contextlib.suppress(InterruptedError):
                            select.select(fds, [], [], min(wait, 1.0))
                    elif wait > 0:
                        time.sleep(min(wait, 1.0))
                    if isinstance(probes, TracefsProbes):
                        got, n = probes.read()
                        hits += got
                        lost["tracefs"] += n
                if probes is not None:
                    for hit in hits:
                        pending[probes.source] += asm.feed(hit)
                if follower is not None:
                    records, n = follower.read()
                    lost["kmsg"] += n
                    for rec in records:
                        if (ev := memory_event(rec, rec.seq)) is not None:
                            pending["kmsg"].append(ev)
                if self.notifier.watchdog_interval is not None and time.monotonic() >= next_dog:
                    self.notifier.notify("WATCHDOG=1")
                    next_dog = time.monotonic() + self.notifier.watchdog_interval
                if final or time.monotonic() >= next_flush:
                    self._flush(writer, probes, asm, pending, lost, head.boot_id, follower)
                    next_flush = time.monotonic() + self.cfg.flush_s
                if final:
                    break
        finally:
            self.notifier.notify("STOPPING=1")
            if probes is not None:
                probes.close()
            if follower is not None:
                follower.close()
        return 0

    def _flush(self, writer: SpoolWriter, probes: BccProbes | TracefsProbes | None,
               asm: Assembler, pending: dict[str, list[RuntimeEvent]], lost: dict[str, int],
               boot_id: str, follower: KmsgFollower | None) -> None:
        if isinstance(probes, BccProbes):
            for caller, pages in probes.drain_managed().items():
                asm.add_managed(caller, pages, None)
        if probes is not None:
            pending[probes.source] += asm.flush_managed()
        for source in ("bcc", "tracefs", "kmsg"):
            events, dropped = pending[source], lost[source]
            try:
                names = writer.batch(source, events, dropped)
            except OSError as exc:
                log.error("%s: cannot write a batch (%s); keeping %d event(s) for the next try",
                          self.cfg.spool, exc, len(events))
                continue
            if names:
                log.info("%s: %d %s event(s)%s", ", ".join(names), len(events), source,
                         f", {dropped} lost" if dropped else "")
            pending[source], lost[source] = [], 0
        if follower is not None:
            self._save_seq(boot_id, follower.last_seq())


COLLECT_EXAMPLES = """
\b
examples:
    memledger collect                          # capture this boot, then probe with bcc or tracefs
    memledger collect --backend tracefs        # no bcc: kprobe events in a tracefs instance
    memledger collect --no-capture --duration 60s --spool /tmp/spool
    echo $((128 << 20)) > /sys/kernel/kexec_crash_size   # a runtime free it reports
\b
It needs CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before Linux 5.8) for bcc, and
CAP_SYSLOG for /dev/kmsg and kernel symbol addresses; see
deploy/systemd/memledger-collector.service.
"""


@click.command(epilog=COLLECT_EXAMPLES)
@click.option("--spool", envvar="MEMLEDGER_SPOOL", show_envvar=True, metavar="DIR",
              default="/var/lib/memledger/spool", show_default=True,
              help="The daemon's spool, where captures and event batches go.")
@click.option("--root", envvar="MEMLEDGER_ROOT", show_envvar=True, default="/", show_default=True,
              help="Root of the running system (for tests and containers).")
@click.option("--backend", envvar="MEMLEDGER_BACKEND", show_envvar=True, default="auto",
              show_default=True, type=click.Choice(["auto", "bcc", "tracefs", "none"]),
              help="How to probe the kernel: auto tries bcc, then tracefs.")
@click.option("--kmsg/--no-kmsg", envvar="MEMLEDGER_KMSG", show_envvar=True, default=True,
              show_default=True, help="Follow /dev/kmsg for memory records after boot.")
@click.option("--capture/--no-capture", envvar="MEMLEDGER_CAPTURE", show_envvar=True,
              default=True, show_default=True, help="Capture this boot into the spool at start.")
@click.option("--flush-interval", "flush", envvar="MEMLEDGER_FLUSH_INTERVAL", show_envvar=True,
              default="5s", show_default=True, help="How often to write event batches.")
@click.option("--duration", envvar="MEMLEDGER_DURATION", show_envvar=True,
              help="Stop after this long (default: run until SIGTERM).")
@click.option("--tracefs", envvar="MEMLEDGER_TRACEFS", show_envvar=True, metavar="DIR",
              help="tracefs mount (default: /sys/kernel/tracing, else /sys/kernel/debug/tracing).")
@click.option("--state-dir", envvar="STATE_DIRECTORY", show_envvar=True, metavar="DIR",
              help="Where to remember the kernel-log position (systemd sets STATE_DIRECTORY).")
@click.option("--log.level", "log_level", envvar="MEMLEDGER_LOG_LEVEL", show_envvar=True,
              type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def collect(spool: str, root: str, backend: Backend, kmsg: bool, capture: bool, flush: str,
            duration: str | None, tracefs: str | None, state_dir: str | None,
            log_level: str) -> None:
    """Capture this boot, then watch for memory the kernel frees at runtime (crashkernel
    shrink, reserve_mem release, memory hotplug) and hand it to the daemon's spool."""
    setup_logging(log_level)
    try:
        flush_s = parse_duration(flush)
        duration_s = parse_duration(duration) if duration is not None else None
    except ValueError as exc:
        fail(str(exc))
    if flush_s <= 0:
        fail("--flush-interval must be more than 0")
    cfg = CollectConfig(spool, root, backend, kmsg, capture, flush_s, duration_s, tracefs,
                        state_dir.split(":")[0] if state_dir else None)
    try:
        code = Collector(cfg).run()
    except CaptureError as exc:
        fail(str(exc))
    except PermissionError as exc:
        fail(f"{exc.filename or ''}: {os.strerror(exc.errno or 0)} (the collector needs "
             "CAP_SYSLOG for /dev/kmsg, and root or CAP_BPF/CAP_PERFMON for probes)", 1)
    raise SystemExit(code)
