"""``memledger daemon``: capture this boot, ingest the spool, serve /metrics, speak sd_notify.

One main thread does all the ingest work, in order; watchdog's inotify observer and the
signal handlers only put work on its queue, and the HTTP server answers scrapes on its own
threads. SIGTERM (or Ctrl-C) lets the capture being ingested finish, then exits 0; SIGHUP
rescans the spool. A database error leaves the file in the spool and retries later.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import queue
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType

import click
from memledger.exporters.dboption import DB_OPTION, open_store
from memledger.exporters.errors import fail
from memledger.exporters.fleetview import FleetView
from memledger.exporters.metrics import IngestMetrics, StoreCollector
from memledger.exporters.notify import Notifier
from memledger.exporters.units import parse_duration, parse_size
from memledger.exporters.web import WebServer, parse_listen_address
from memledger.store.db import (
    StoreError,
    default_db_path,
    describe_error,
    display_url,
    resolve_url,
    sqlite_path,
)
from memledger.store.files import is_temporary
from memledger.store.ingest import BadCapture, ingest, prepare
from memledger.store.runtime import BatchError, ingest_batch
from memledger.store.spool import Refused, Spool, UnsafeSpool
from memledger.tracer.capture import CaptureError, normalise_machine_id, record
from memledger.tracer.reader import FsTree
from memledger.tracer.runtime import is_batch
from prometheus_client import CollectorRegistry, ProcessCollector
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

__all__ = ("DEFAULT_LISTEN", "Daemon", "DaemonConfig", "daemon")

VERSION = version("memledger")
# Outside the 9100-9999 block of exporter ports, which is fully allocated (anchors B.2).
DEFAULT_LISTEN = ":9031"
_RETRY_S = 30.0
_PRUNE_EVERY_S = 600.0
_TICK_S = 5.0

log = logging.getLogger("memledger.daemon")


@dataclass(slots=True)
class DaemonConfig:
    url: URL
    spool: str
    root: str = "/"
    capture_self: bool = True
    listen: str = DEFAULT_LISTEN
    telemetry_path: str = "/metrics"
    max_bytes: int = 64 << 20
    retention_s: float = 7 * 86400
    fleet: bool = False
    fleet_refresh_s: float = 60.0


def _machine_id(root: str) -> str | None:
    """This machine's id, naming the boots host-mode metrics describe."""
    try:
        return normalise_machine_id(Path(root, "etc/machine-id").read_text())
    except (OSError, CaptureError):
        return None


class _SpoolEvents(FileSystemEventHandler):
    """Queue a spool name when a writer closes it or renames it in (watchdog ≥ 1.0.3,
    inotify IN_CLOSE_WRITE and IN_MOVED_TO), or when a non-file appears (to refuse it)."""

    def __init__(self, spool: str, work: queue.Queue[tuple[str, str]]) -> None:
        self.spool = os.path.realpath(spool)
        self.work = work

    def _offer(self, path: str | bytes) -> None:
        path = os.fsdecode(path)
        if os.path.realpath(os.path.dirname(path)) == self.spool:
            name = os.path.basename(path)
            if not is_temporary(name):
                self.work.put(("file", name))

    def on_closed(self, event: FileClosedEvent) -> None:
        self._offer(event.src_path)

    def on_moved(self, event: DirMovedEvent | FileMovedEvent) -> None:
        self._offer(event.dest_path)

    def on_created(self, event: FileCreatedEvent | DirCreatedEvent) -> None:
        path = os.fsdecode(event.src_path)
        try:
            regular = os.path.isfile(path) and not os.path.islink(path)
        except OSError:
            return
        if not regular:  # symlinks, FIFOs, devices never send IN_CLOSE_WRITE
            self._offer(path)


class Daemon:
    def __init__(self, cfg: DaemonConfig, engine: Engine, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.notifier = notifier or Notifier()
        self.spool = Spool(cfg.spool, cfg.max_bytes)
        self.work: queue.Queue[tuple[str, str]] = queue.Queue()
        self.stopping = False
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(StoreCollector(engine, _machine_id(cfg.root), cfg.fleet))
        self.fleet = FleetView(engine, cfg.fleet_refresh_s) if cfg.fleet else None
        self.metrics = IngestMetrics(self.registry)
        self.counts: dict[str, int] = {"new": 0, "replaced": 0, "duplicate": 0, "older": 0,
                                       "failed": 0}
        self._next_watchdog = 0.0
        self._retry_at: float | None = None

    # -- signals and health -------------------------------------------------------------

    def _on_term(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("%s: finishing the current capture, then exiting",
                     signal.Signals(signum).name)
        self.stopping = True
        self.work.put(("stop", ""))

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.work.put(("rescan", ""))

    def _heartbeat(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is not None and time.monotonic() >= self._next_watchdog:
            self.notifier.notify("WATCHDOG=1")
            self._next_watchdog = time.monotonic() + interval

    def _status(self) -> str:
        c = self.counts
        return (f"{c['new'] + c['replaced']} stored, {c['duplicate'] + c['older']} duplicate, "
                f"{c['failed']} failed; serving http://{self.web.address}{self.web.path}")

    def _landing(self) -> dict[str, str]:
        return {"version": VERSION, "database": display_url(self.cfg.url),
                "spool": self.cfg.spool, "status": self._status()}

    # -- work -------------------------------------------------------------------------

    def _done(self, name: str) -> None:
        """Stored: move the file to done/ (a failure leaves a duplicate for later, no loss)."""
        try:
            self.spool.mark_done(name)
        except OSError as exc:
            log.error("%s: stored, but could not move it to done/: %s", name, exc)

    def _count(self, key: str) -> None:
        """Count one file: new, replaced, duplicate, older or failed."""
        if key in ("new", "replaced") and self.fleet is not None:
            self.fleet.changed()  # before the counter: a scrape that sees it waits for both
        self.counts[key] += 1
        self.metrics.record({"new": "ok", "replaced": "ok", "duplicate": "duplicate",
                             "older": "duplicate", "failed": "failed"}[key])

    def _refuse(self, name: str, why: str) -> None:
        self._count("failed")
        try:
            target = self.spool.mark_failed(name, why)
        except OSError as exc:
            log.error("%s: %s; could not move it to failed/: %s", name, why, exc)
            return
        log.warning("%s: %s (moved to failed/%s)", name, why, target)

    def process(self, name: str) -> None:
        """Ingest one spool entry and move it to done/ or failed/."""
        try:
            data = self.spool.read(name)
        except Refused as exc:
            self._refuse(name, f"refused: {exc}")
            return
        except OSError as exc:
            log.error("%s: cannot read it (%s); it stays in the spool", name, exc)
            return
        if data is None:
            return  # already handled (a second event for the same file)
        if is_batch(data):
            self._process_batch(name, data)
            return
        try:
            prepared = prepare(data, VERSION)
        except BadCapture as exc:
            self._refuse(name, str(exc))
            return
        except Exception as exc:  # a parser bug must not stop the daemon or lose the file
            log.exception("%s: internal error while parsing", name)
            self._refuse(name, f"internal error: {type(exc).__name__}: {exc}")
            return
        try:
            result = ingest(self.engine, prepared, origin=name)
        except SQLAlchemyError as exc:
            self._db_error(name, exc)
            return
        self._count(result.status)  # first: whoever sees the file in done/ sees the count
        self._done(name)
        log.info("%s: %s boot %s of %s (%s)", name, result.status, result.boot_id,
                 result.machine_id, result.kernel_release or "release unknown")

    def _process_batch(self, name: str, data: bytes) -> None:
        """A runtime event batch from ``memledger collect``."""
        try:
            result = ingest_batch(self.engine, data, origin=name)
        except BatchError as exc:
            self._refuse(name, str(exc))
            return
        except SQLAlchemyError as exc:
            self._db_error(name, exc)
            return
        self._count(result.status)  # first: whoever sees the file in done/ sees the count
        self._done(name)
        lost = f", {result.dropped} lost before it" if result.dropped else ""
        log.info("%s: %s %s batch of boot %s of %s: %d event(s)%s", name, result.status,
                 result.source, result.boot_id, result.machine_id, result.events, lost)

    def _db_error(self, name: str, exc: SQLAlchemyError) -> None:
        reason = describe_error(self.engine.url, exc)
        log.error("%s: database error (%s); it stays in the spool, retry in %.0fs",
                  name, reason, _RETRY_S)
        self._retry_at = time.monotonic() + _RETRY_S

    def rescan(self) -> None:
        try:
            names = self.spool.waiting()
        except OSError as exc:
            log.error("%s: cannot list the spool: %s", self.cfg.spool, exc)
            return
        for name in names:
            if self.stopping:
                return
            self.process(name)
            self._heartbeat()
        self.notifier.status(self._status())

    def capture_self(self) -> None:
        """Capture and ingest the running boot from ``--root``."""
        root = self.cfg.root
        try:
            data, manifest = record(FsTree(root), root, memledger_version=VERSION,
                                    captured_at=datetime.now(UTC))
            result = ingest(self.engine, prepare(data, VERSION), origin="self")
        except (CaptureError, BadCapture) as exc:
            log.error("capture of this boot from %s failed: %s", root, exc)
            return
        except SQLAlchemyError as exc:
            log.error("capture of this boot: database error: %s", exc)
            return
        self._count(result.status)
        unreadable = ", ".join(sorted(manifest.unreadable)) or "none"
        log.info("this boot: %s boot %s (%s); unreadable: %s", result.status, result.boot_id,
                 result.kernel_release or "release unknown", unreadable)

    def _prune(self) -> None:
        try:
            removed = self.spool.prune_done(self.cfg.retention_s)
        except OSError as exc:
            log.error("%s: cannot prune done/: %s", self.spool.done, exc)
            return
        if removed:
            log.info("pruned %d file(s) from done/ (older than %ss)", removed, self.cfg.retention_s)

    def run(self) -> int:
        self.spool.ensure()
        # Everything imported and built so far lives as long as the process: a full
        # collection need not walk it again at every scrape's garbage (a p99 outlier).
        gc.freeze()
        if self.fleet is not None:
            self.fleet.start()
        self.web = WebServer(self.cfg.listen, self.cfg.telemetry_path, self.registry,
                             self._landing, self.fleet.body if self.fleet is not None else None)
        self.web.start()
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        observer = Observer()
        observer.schedule(_SpoolEvents(self.cfg.spool, self.work), self.cfg.spool, recursive=False)
        observer.start()
        log.info("memledger %s: database %s, spool %s, serving http://%s%s", VERSION,
                 display_url(self.cfg.url), self.cfg.spool, self.web.address, self.web.path)
        self.notifier.notify("READY=1", f"STATUS=serving http://{self.web.address}{self.web.path}")
        self._heartbeat()
        try:
            if self.cfg.capture_self:
                self.capture_self()
            self.rescan()
            self._prune()
            next_prune = time.monotonic() + _PRUNE_EVERY_S
            while not self.stopping:
                wait = _TICK_S
                if self.notifier.watchdog_interval is not None:
                    wait = min(wait, max(0.0, self._next_watchdog - time.monotonic()))
                try:
                    kind, name = self.work.get(timeout=wait)
                except queue.Empty:
                    kind, name = "", ""
                if kind == "file":
                    self.process(name)
                    self.notifier.status(self._status())
                elif kind == "rescan":
                    log.info("rescanning the spool")
                    self.rescan()
                self._heartbeat()
                now = time.monotonic()
                if self._retry_at is not None and now >= self._retry_at:
                    self._retry_at = None
                    self.rescan()
                if now >= next_prune:
                    self._prune()
                    next_prune = now + _PRUNE_EVERY_S
        finally:
            self.notifier.notify("STOPPING=1")
            observer.stop()
            observer.join()
            self.web.stop()
            if self.fleet is not None:
                self.fleet.stop()
        log.info("stopped: %s", self._status())
        return 0


DAEMON_EXAMPLES = f"""
\b
examples:
    memledger daemon                                  # SQLite in the default state directory
    memledger daemon --web.listen-address 127.0.0.1:9031 --spool /var/spool/memledger
    memledger daemon --db postgresql+psycopg://memledger@fleetdb/memledger
    kill -HUP $(pidof -x memledger)                   # rescan the spool now
\b
producers drop capture files into the spool atomically:
    memledger capture -o /var/spool/memledger/

The default listen address, {DEFAULT_LISTEN}, is outside the 9100-9999 block of exporter ports.
"""


@click.command(epilog=DAEMON_EXAMPLES)
@DB_OPTION
@click.option("--spool", envvar="MEMLEDGER_SPOOL", show_envvar=True, metavar="DIR",
              help="Directory of capture files to ingest (default: spool/ beside the database).")
@click.option("--root", envvar="MEMLEDGER_ROOT", show_envvar=True, default="/", show_default=True,
              help="Root to capture the running boot from at start.")
@click.option("--capture-self/--no-capture-self", envvar="MEMLEDGER_CAPTURE_SELF",
              show_envvar=True, default=True, show_default=True,
              help="Capture and ingest the running boot at start.")
@click.option("--web.listen-address", "listen", envvar="MEMLEDGER_WEB_LISTEN_ADDRESS",
              show_envvar=True, default=DEFAULT_LISTEN, show_default=True,
              help="[HOST]:PORT to serve metrics on.")
@click.option("--web.telemetry-path", "telemetry_path", envvar="MEMLEDGER_WEB_TELEMETRY_PATH",
              show_envvar=True, default="/metrics", show_default=True,
              help="Path of the metrics.")
@click.option("--spool.max-size", "max_size", envvar="MEMLEDGER_SPOOL_MAX_SIZE", show_envvar=True,
              default="64MiB", show_default=True, help="Refuse larger spool files.")
@click.option("--spool.retention", "retention", envvar="MEMLEDGER_SPOOL_RETENTION",
              show_envvar=True, default="7d", show_default=True,
              help="Keep files in spool/done/ this long (0: delete once stored).")
@click.option("--fleet", envvar="MEMLEDGER_FLEET", show_envvar=True, is_flag=True,
              help="Export aggregates per kernel release and firmware version (for a central "
                   "store) instead of this host's current boot.")
@click.option("--fleet.refresh", "fleet_refresh", envvar="MEMLEDGER_FLEET_REFRESH",
              show_envvar=True, default="60s", show_default=True,
              help="With --fleet: read the aggregates again this often (and after every boot "
                   "this daemon stores); scrapes serve the last reading.")
@click.option("--log.level", "log_level", envvar="MEMLEDGER_LOG_LEVEL", show_envvar=True,
              type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def daemon(db: str | None, spool: str | None, root: str, capture_self: bool, listen: str,
           telemetry_path: str, max_size: str, retention: str, fleet: bool,
           fleet_refresh: str, log_level: str) -> None:
    """Run the memledger service: store this boot and every capture dropped into the
    spool, and serve Prometheus metrics."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        parse_listen_address(listen)
        max_bytes = parse_size(max_size)
        retention_s = parse_duration(retention)
        fleet_refresh_s = parse_duration(fleet_refresh)
        if fleet_refresh_s <= 0:
            raise ValueError(f"--fleet.refresh {fleet_refresh!r}: must be more than 0")
    except ValueError as exc:
        fail(str(exc))
    try:
        url = resolve_url(db)
    except StoreError as exc:
        fail(str(exc))
    db_file = sqlite_path(url)
    spool = spool or str((db_file or default_db_path()).parent / "spool")
    cfg = DaemonConfig(url, spool, root, capture_self, listen, telemetry_path, max_bytes,
                       retention_s, fleet, fleet_refresh_s)
    with open_store(db, create=True) as engine:
        try:
            code = Daemon(cfg, engine).run()
        except UnsafeSpool as exc:
            fail(str(exc))
        except OSError as exc:  # the listen address is taken, or the spool cannot be watched
            where = listen if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) else spool
            fail(f"{where}: {os.strerror(exc.errno or 0) or exc}", 1)
    raise SystemExit(code)
