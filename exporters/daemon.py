"""The memledger service: capture this boot, ingest the spool, serve /metrics, speak sd_notify
(`memledger daemon`, cli/daemon.py, checks the options and starts it).

One main thread decides all the ingest work, in order. Files that wait together (a
reboot wave at a fleet daemon) are handed to the parser children as they are taken
(one per CPU on a fleet daemon, each driven by a thread of the daemon), and stored
together while the next ones are parsed: up to 64 captures in one transaction
(store/ingest.py's ingest_many), each still decided, counted and moved to done/ or
failed/ by its own outcome, in the order taken. Everything else only tells the main
thread what to do and wakes it through a pipe: watchdog's inotify observer and the
fleet's POST handler (exporters/receive.py) queue names, the signal handlers set flags
(SIGTERM or Ctrl-C: finish the files being parsed, store the files parsed, put the
rest back, then exit 0; SIGHUP: rescan the spool), and the HTTP server answers
scrapes on its own threads.

Nothing in the spool can stop the loop for good:

- each file is claimed (renamed into inflight/) before it is read, and parsed in a child
  process with a memory cap and a deadline, while the main thread goes on with its
  watchdog pings (exporters/parsechild.py);
- whatever is wrong with a file, or with the code reading it, sends that file to failed/
  with one line saying why, and is counted; only an error of the database itself (it is
  down, full, locked) or of this process's resources (out of descriptors) puts the file
  back to wait, and it is tried again shortly;
- the spool is rescanned every ``--spool.rescan-interval``, at once when the kernel's inotify queue
  overflowed, and when the spool directory was moved aside and made again (then it is
  watched anew), so no file is left behind however events were lost.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import gc
import hashlib
import logging
import os
import random
import select
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType

from memledger.exporters.fleetview import FleetView
from memledger.exporters.forward import Forwarder
from memledger.exporters.metrics import IngestMetrics, SpoolCollector, StoreCollector
from memledger.exporters.notify import Notifier
from memledger.exporters.parsechild import (
    MEMORY_LIMIT,
    TIME_LIMIT_S,
    Parsed,
    ParserPool,
    Unparsable,
)
from memledger.exporters.receive import Receiver
from memledger.exporters.web import WebServer
from memledger.spool.reader import Claim, Refused, Spool, UnsafeSpool
from memledger.spool.received import sender_of
from memledger.store.compare import size_text
from memledger.store.db import (
    StoreError,
    describe_error,
    display_url,
    is_permanent,
)
from memledger.store.files import is_temporary
from memledger.store.ingest import BadCapture, ingest, ingest_many, prepare
from memledger.store.migrate import HEAD, schema_state, upgrade
from memledger.store.queries import StoredBoot, boot_notes, running_and_previous
from memledger.store.runtime import BatchError, store_batch
from memledger.tracer.capture import CaptureError, normalise_boot_id, normalise_machine_id, record
from memledger.tracer.reader import FsTree
from memledger.tracer.untrusted import printable
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
from watchdog.observers.api import BaseObserver

__all__ = ("DEFAULT_LISTEN", "FLEET_PARSERS", "Daemon", "DaemonConfig", "boot_facts")

VERSION = version("memledger")
# Outside the 9100-9999 block of exporter ports, which is fully allocated.
DEFAULT_LISTEN = ":9031"
# A fleet daemon parses with one child per CPU, up to this many: in a reboot wave a child
# parses a capture in 3.3 ms and the main thread stores one in 2 to 4 ms, so with two
# children the store is the limit (BENCHMARKS.md, "Fleet ingest").
FLEET_PARSERS = 4
_DB_RETRY_S = 30.0
# A store that is down or of another schema at start is tried again after 1 s, then twice
# as long each time up to _DB_RETRY_S, each pause with jitter (a fleet's daemons restarted
# together must not knock on the database together).
_STORE_FIRST_RETRY_S = 1.0
_RESOURCE_RETRY_S = 5.0
_PRUNE_EVERY_S = 600.0
_TICK_S = 5.0
# Files stored in one transaction when many wait (a reboot wave at a fleet daemon): one
# transaction of a capture costs a dozen round trips to the database whatever it holds.
# The bytes bound what a batch holds in memory (each file and its parsed form).
_BATCH_FILES = 64
_BATCH_BYTES = 32 << 20
# How often the loop pings the watchdog while it waits for the parser.
_PARSE_STEP_S = 0.1
# Errors of this process's resources, not of the file: the file waits and is tried again.
_RESOURCE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN,
                              errno.ENOSPC, errno.EDQUOT, errno.EIO))

log = logging.getLogger("memledger.daemon")


@dataclass(slots=True)
class DaemonConfig:
    url: URL
    spool: str
    root: str = "/"
    capture_self: bool = True
    listen: str = DEFAULT_LISTEN
    telemetry_path: str = "/metrics"
    max_bytes: int = 16 << 20
    retention_s: float = 7 * 86400
    fleet: bool = False
    fleet_refresh_s: float = 60.0
    rescan_s: float = 60.0
    parse_timeout_s: float = TIME_LIMIT_S
    parse_memory: int = MEMORY_LIMIT
    web_config_file: str | None = None  # --web.config.file: TLS and authentication
    fleet_window_s: float = 0.0  # with fleet: only boots captured this recently count
    parsers: int = 1  # parser children (a fleet daemon's reboot wave keeps several busy)


def _mib(value: int | None) -> str:
    return "unknown" if value is None else size_text(value, "bytes")


def boot_facts(b: StoredBoot) -> dict[str, str]:
    """The landing page's summary of one stored boot, "does not apply" said as such."""
    doc = b["document"]
    bs, low = doc["efi_boot_services"], doc["low_memory"]
    codes = sorted({a["code"] for a in doc["anomalies"]})
    out = {"current boot": f"{b['boot_id']} (kernel {b['kernel_release'] or 'unknown'}, "
                           f"captured {b['captured_at']:%Y-%m-%d %H:%M:%S} UTC)"}
    firmware = " ".join(v for v in (b["firmware_vendor"], b["firmware_version"]) if v)
    out["firmware"] = ("not EFI (BIOS)" if b["efi"] is False else
                       ("EFI" if b["efi"] else "unknown") + (f", {firmware}" if firmware else ""))
    if b["efi"] is not False:
        out["EFI boot services"] = ", ".join(
            f"{k} {_mib(v)}" for k, v in (("total", bs["total_bytes"]),
                                          ("reclaimed", bs["reclaimed_bytes"]),
                                          ("kept", bs["kept_bytes"]), ("leaked", bs["leaked_bytes"])))
    out["below 1 MiB"] = (f"reserved {_mib(low['reserved_bytes'])}, "
                          f"freed {_mib(low['freed_bytes'])}")
    out["anomalies"] = ", ".join(codes) or "none"
    for code in codes:  # each with why, as analyze says it
        out[code] = "; ".join(f"{a['severity']}: {a['message']}" for a in doc["anomalies"]
                              if a["code"] == code)
    if notes := boot_notes(b["efi"]):
        out["note"] = "; ".join(notes)
    return out


def _boot_id(root: str) -> str | None:
    """The running boot's id: the boot the landing page and host-mode metrics call
    current."""
    try:
        return normalise_boot_id(Path(root, "proc/sys/kernel/random/boot_id").read_text())
    except (OSError, CaptureError):
        return None


def _machine_id(root: str) -> str | None:
    """This machine's id, naming the boots host-mode metrics describe."""
    try:
        return normalise_machine_id(Path(root, "etc/machine-id").read_text())
    except (OSError, CaptureError):
        return None


@dataclass(slots=True)
class _Ahead:
    """A spool file claimed and read, handed to the parser."""

    claim: Claim
    data: bytes
    parsing: concurrent.futures.Future[Parsed]


@dataclass(slots=True)
class _Taken:
    """A spool file claimed, read and parsed, waiting to be stored."""

    claim: Claim
    data: bytes
    parsed: Parsed
    origin: str  # the name it is stored with (printable)
    sender: str  # who sent it to this fleet daemon ('' for a local producer's file)


class _Wakeup:
    """The main loop's inbox: names from the observer thread, and a pipe that wakes the
    loop (written by the observer, and by the C-level signal handler through
    signal.set_wakeup_fd, so Python signal handlers need do no more than set a flag)."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.names: collections.deque[str] = collections.deque()
        self.queued: set[str] = set()
        self.rescan = threading.Event()

    def offer(self, name: str) -> None:
        """Queue a name unless it is queued already (from any thread: a race only makes
        a name queued twice, and the second claim finds nothing)."""
        if name not in self.queued:
            self.queued.add(name)
            self.names.append(name)

    def take(self) -> str:
        name = self.names.popleft()
        self.queued.discard(name)
        return name

    def arrived(self, name: str) -> None:
        """A file the daemon put into the spool itself (a POST): queued at once. Its
        inotify event can come half a second late: watchdog holds every event behind a
        rename out of the spool (each claim) until that rename's pair could have come."""
        self.offer(name)
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is awake already
            os.write(self.wfd, b"\0")

    def wait(self, timeout: float) -> None:
        if select.select([self.rfd], [], [], timeout)[0]:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.rfd, 4096):
                    pass

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)


class _SpoolEvents(FileSystemEventHandler):
    """Queue a spool name when a writer closes it or renames it in (watchdog ≥ 1.0.3,
    inotify IN_CLOSE_WRITE and IN_MOVED_TO), or when a non-file appears (to refuse it)."""

    def __init__(self, spool: str, inbox: _Wakeup) -> None:
        self.spool = os.path.realpath(spool)
        self.inbox = inbox

    def _offer(self, path: str | bytes) -> None:
        path = os.fsdecode(path)
        if os.path.realpath(os.path.dirname(path)) == self.spool:
            name = os.path.basename(path)
            if not is_temporary(name):
                self.inbox.offer(name)
                self.inbox.wake()

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


class _Overflow(logging.Filter):
    """Watchdog reports a kernel inotify queue overflow (IN_Q_OVERFLOW: events were lost)
    only in its log; this filter turns that record into a rescan request."""

    def __init__(self, inbox: _Wakeup) -> None:
        super().__init__()
        self.inbox = inbox

    def filter(self, record: logging.LogRecord) -> bool:
        if "queue overflow" in str(record.msg).lower():
            self.inbox.rescan.set()
            self.inbox.wake()
        return True


class Daemon:
    def __init__(self, cfg: DaemonConfig, engine: Engine, notifier: Notifier | None = None,
                 forwarder: Forwarder | None = None) -> None:
        """``forwarder``: sends every file stored to the fleet daemons (--forward.url)."""
        self.cfg = cfg
        self.forwarder = forwarder
        self.engine = engine
        self.notifier = notifier or Notifier()
        self.spool = Spool(cfg.spool, cfg.max_bytes)
        self.inbox = _Wakeup()
        self.stopping = False
        self._stop_signal: int | None = None
        self._hup = False
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.machine_id = _machine_id(cfg.root)
        self.boot_id = _boot_id(cfg.root)
        self.registry.register(StoreCollector(engine, self.machine_id, cfg.fleet, self.boot_id,
                                              lambda: self.store_why is not None))
        self.registry.register(SpoolCollector(self.spool))
        self.fleet = FleetView(engine, cfg.fleet_refresh_s, cfg.fleet_window_s) if cfg.fleet else None
        self.metrics = IngestMetrics(self.registry)
        if forwarder is not None:
            self.registry.register(forwarder.collector)
        self.parser = ParserPool(cfg.parsers, VERSION, cfg.parse_memory, cfg.parse_timeout_s)
        # A thread per parser child hands it files and waits for it, while the main thread
        # stores the files parsed before them, in the order they were taken (_drain).
        self._parsing = concurrent.futures.ThreadPoolExecutor(cfg.parsers,
                                                              thread_name_prefix="parse")
        self.counts: dict[str, int] = {"new": 0, "replaced": 0, "duplicate": 0, "older": 0,
                                       "failed": 0}
        self._next_watchdog = 0.0
        self._retry_at: float | None = None
        # Whether the store can be used (reachable, its schema this memledger's), and why
        # not. An empty store is created by whoever comes first; an older schema is migrated
        # only by its owner: a fleet daemon, or a host daemon over its own SQLite file (a
        # host daemon never migrates a shared PostgreSQL).
        self.owns_schema = cfg.fleet or engine.url.get_backend_name() == "sqlite"
        self.store_why: str | None = "not opened yet"
        self._store_retry_s = _STORE_FIRST_RETRY_S
        self._store_check_at = 0.0
        self._self_pending = cfg.capture_self
        self._observer: BaseObserver | None = None

    # -- signals and health -------------------------------------------------------------

    def _on_term(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags here (a handler that logs or queues can deadlock on a lock its own
        # thread holds); the wakeup fd has woken the loop already.
        self.stopping = True
        self._stop_signal = signum

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._hup = True

    def _heartbeat(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is not None and time.monotonic() >= self._next_watchdog:
            self.notifier.notify("WATCHDOG=1")
            self._next_watchdog = time.monotonic() + interval

    def _status(self) -> str:
        c = self.counts
        return (f"{c['new'] + c['replaced']} stored, {c['duplicate'] + c['older']} duplicate, "
                f"{c['failed']} failed; serving {self.web.scheme}://{self.web.address}{self.web.path}")

    def _landing(self) -> dict[str, str]:
        facts = {"version": VERSION, "database": display_url(self.cfg.url),
                 "spool": self.cfg.spool, "status": self._status()}
        if self.store_why is not None:
            return {**facts, "store": f"not in use: {self.store_why}"}
        if self.cfg.fleet:
            return facts
        try:
            with self.engine.connect() as conn:
                current, _ = running_and_previous(conn, self.machine_id, self.boot_id)
        except SQLAlchemyError as exc:
            return {**facts, "current boot": f"unknown: {describe_error(self.engine.url, exc)}"}
        if current is None:
            return {**facts, "current boot": f"{self.boot_id or 'this boot'}: not stored yet"}
        return {**facts, **boot_facts(current)}

    # -- the store ----------------------------------------------------------------------

    def _store_problem(self) -> str | None:
        """Why the store cannot be used now (None: it can), migrating it first when this
        daemon owns its schema."""
        try:
            state = schema_state(self.engine)
            if state == "empty" or (state == "behind" and self.owns_schema):
                upgrade(self.engine)
                state = "current"
        except StoreError as exc:
            return str(exc)
        except SQLAlchemyError as exc:
            return f"unreachable: {describe_error(self.engine.url, exc)}"
        if state == "newer":
            return (f"its schema is newer than this memledger's ({HEAD}): a later memledger "
                    "migrated it; upgrade this one")
        if state != "current":
            return (f"its schema is not this memledger's {HEAD}, and a host daemon does not "
                    "migrate a shared store: run `memledger db upgrade`, or start a fleet "
                    "daemon, which does")
        return None

    def _check_store(self) -> bool:
        """Check the store (at start, when retrying, at each rescan); log a change of its
        state once. True when it can be used."""
        why = self._store_problem()
        if why != self.store_why:
            if why is None:
                log.info("store %s: in use", display_url(self.cfg.url))
            else:
                log.error("store %s: %s; the spool waits, retrying", display_url(self.cfg.url),
                          why)
        if why is None:
            self._store_retry_s = _STORE_FIRST_RETRY_S
        else:
            pause = self._store_retry_s * random.uniform(0.5, 1.0)
            self._store_check_at = time.monotonic() + pause
            self._store_retry_s = min(_DB_RETRY_S, self._store_retry_s * 2)
        self.store_why = why
        return why is None

    # -- one file -----------------------------------------------------------------------

    def _count(self, key: str) -> None:
        """Count one file: new, replaced, duplicate, older or failed."""
        if key in ("new", "replaced") and self.fleet is not None:
            self.fleet.changed()  # before the counter: a scrape that sees it waits for both
        self.counts[key] += 1
        self.metrics.record({"new": "ok", "replaced": "ok", "duplicate": "duplicate",
                             "older": "duplicate", "failed": "failed"}[key])

    def _done(self, claim: Claim) -> None:
        """Stored: move the file to done/ (a failure leaves it for the next start, which
        counts it as a duplicate; nothing is lost). The caller syncs (_sync_done)."""
        try:
            self.spool.mark_done(claim, sync=False)
        except OSError as exc:
            log.error("%s: stored, but could not move it to done/: %s",
                      printable(claim.name), exc)

    def _sync_done(self) -> None:
        try:
            self.spool.sync_done()
        except OSError as exc:
            log.error("%s: cannot sync the moves to done/ (%s); a crash now would offer "
                      "those files again, as duplicates", self.spool.inflight, exc)

    def _refuse(self, claim: Claim, why: str) -> None:
        self._count("failed")
        name = printable(claim.name)
        try:
            target = self.spool.mark_failed(claim, why)
        except OSError as exc:
            log.error("%s: %s; could not move it to failed/: %s", name, why, exc)
            return
        log.warning("%s: %s (moved to failed/%s)", name, why, printable(target))

    def _put_back(self, claim: Claim, what: str, retry_s: float, quiet: bool = False) -> None:
        """Not the file's fault: back into the spool, and a rescan in ``retry_s``
        (``quiet``: one of several, said in a line of their own)."""
        name = printable(claim.name)
        try:
            self.spool.release(claim)
        except OSError as exc:
            log.error("%s: %s; it stays in inflight/ (%s) until the next start", name, what, exc)
        else:
            (log.debug if quiet else log.error)(
                "%s: %s; it stays in the spool, retry in %.0fs", name, what, retry_s)
        retry_at = time.monotonic() + retry_s
        self._retry_at = retry_at if self._retry_at is None else min(self._retry_at, retry_at)

    def _claim_and_read(self, name: str) -> tuple[Claim, bytes] | None:
        """Claim one spool entry and read it; None when there is nothing more to do with it
        (already taken, refused, or put back to wait)."""
        try:
            claim = self.spool.claim(name)
        except UnsafeSpool as exc:
            log.error("%s", exc)
            return None
        except OSError as exc:
            log.error("%s: cannot take it (%s); retry in %.0fs", printable(name),
                      os.strerror(exc.errno or 0) or exc, _RESOURCE_RETRY_S)
            self._retry_at = time.monotonic() + _RESOURCE_RETRY_S
            return None
        if claim is None:
            return None  # already taken (a second event for the same file)
        try:
            return claim, self.spool.read(claim)
        except Refused as exc:
            self._refuse(claim, f"refused: {exc}")
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                self._refuse(claim, f"unreadable: {os.strerror(exc.errno or 0) or exc}")
            else:
                self._put_back(claim, f"cannot read it ({os.strerror(exc.errno or 0)})",
                               _RESOURCE_RETRY_S)
        except Exception as exc:  # the last word: no file may stop the daemon
            log.exception("%s: internal error", printable(name))
            self._refuse(claim, f"internal error: {type(exc).__name__}: {exc}")
        return None

    def _parsed(self, a: _Ahead) -> _Taken | None:
        """The parser's answer for a file, waited for with watchdog pings; None when the
        file was refused or put back."""
        self._wait_for(a.parsing)
        try:
            parsed = a.parsing.result()
        except Unparsable as exc:
            if exc.internal:
                log.error("%s: internal error while parsing: %s", printable(a.claim.name), exc)
            self._refuse(a.claim, f"internal error: {exc}" if exc.internal else str(exc))
            return None
        except OSError as exc:  # no process or descriptor for the parser
            self._put_back(a.claim, f"cannot start the parser ({exc})", _RESOURCE_RETRY_S)
            return None
        except Exception as exc:  # the last word: no file may stop the daemon
            log.exception("%s: internal error", printable(a.claim.name))
            self._refuse(a.claim, f"internal error: {type(exc).__name__}: {exc}")
            return None
        # A fleet daemon's name for who sent it ('' for a local producer's file).
        return _Taken(a.claim, a.data, parsed, printable(a.claim.name, 1000),
                      sender_of(a.claim.name) or "")

    def _wait_for(self, parsing: concurrent.futures.Future[Parsed]) -> None:
        while not parsing.done():
            concurrent.futures.wait([parsing], _PARSE_STEP_S)
            self._heartbeat()

    def _put_back_ahead(self, ahead: collections.deque[_Ahead], what: str,
                        retry_s: float) -> None:
        """Files read but not stored go back into the spool: their parsing is cancelled, or
        waited for when it has begun, so that no parser thread still holds a file that is
        back in the spool."""
        for a in ahead:
            a.parsing.cancel()
        while ahead:
            a = ahead.popleft()
            self._wait_for(a.parsing)
            self._put_back(a.claim, what, retry_s, quiet=True)

    def _store(self, taken: list[_Taken]) -> bool:
        """Store parsed files, in order: a run of captures (up to the next event batch)
        in one transaction, each event batch in its own. Each file then goes to done/ or
        failed/ by its own outcome, as if it had come alone (ingest_many decides each
        capture in order, and writes a batch the database refuses again one capture per
        transaction); when the database cannot be used, it and every file after it wait
        in the spool, and the answer is False."""
        while taken:
            run = 1 if taken[0].parsed.batch is not None else next(
                (i for i, t in enumerate(taken) if t.parsed.batch is not None), len(taken))
            group, taken = taken[:run], taken[run:]
            if not self._store_group(group, taken):
                for t in taken:
                    self._put_back(t.claim, "waits with the files before it", _DB_RETRY_S,
                                   quiet=True)
                return False
        return True

    def _store_group(self, group: list[_Taken], rest: list[_Taken]) -> bool:
        """Store one event batch, or captures in one transaction; False when
        the database is away (the files are back in the spool, and ``rest``, the files
        after them, are to go back too)."""
        try:
            outcomes = self._write(group)
        except SQLAlchemyError as exc:
            reason = describe_error(self.engine.url, exc)
            for i, t in enumerate(group):
                if is_permanent(exc):
                    self._refuse(t.claim, f"the database refused it: {reason}")
                else:
                    self._put_back(t.claim, f"database error ({reason})", _DB_RETRY_S,
                                   quiet=i > 0)
            if not is_permanent(exc) and (more := len(group) - 1 + len(rest)):
                log.error("%d more file(s) stay in the spool with it", more)
            return is_permanent(exc)
        except Exception as exc:  # the last word: no file may stop the daemon
            log.exception("%s: internal error", printable(group[0].claim.name))
            for t in group:
                self._refuse(t.claim, f"internal error: {type(exc).__name__}: {exc}")
            return True
        for t, (status, what) in zip(group, outcomes, strict=True):
            try:
                self._finish(t, status, what)
            except Exception as exc:
                log.exception("%s: internal error", printable(t.claim.name))
                self._refuse(t.claim, f"internal error: {type(exc).__name__}: {exc}")
        self._sync_done()
        return True

    def _write(self, group: list[_Taken]) -> list[tuple[str, str]]:
        """Each file's status ("refused" with the database's reason as its "what")."""
        batch = group[0].parsed.batch
        if batch is not None:
            t = group[0]
            try:
                b = store_batch(self.engine, batch, hashlib.sha256(t.data).hexdigest(),
                                origin=t.origin, sender=t.sender)
            except BatchError as exc:
                return [("failed", str(exc))]
            return [(b.status, f"{b.source} batch of boot {b.boot_id} of {b.machine_id}: "
                               f"{b.events} event(s)"
                               + (f", {b.dropped} lost before it" if b.dropped else ""))]
        items = []
        for t in group:
            assert t.parsed.capture is not None
            items.append((t.parsed.capture, t.origin))
        results = ingest_many(self.engine, items, senders=[t.sender for t in group])
        return [(r.status, f"the database refused it: {r.why}" if r.status == "refused" else
                 f"boot {r.boot_id} of {r.machine_id} ({r.kernel_release or 'release unknown'})")
                for r in results]

    def _finish(self, t: _Taken, status: str, what: str) -> None:
        """One file's outcome: counted, forwarded, moved to done/; or refused."""
        if status in ("refused", "failed"):
            self._refuse(t.claim, what)
            return
        self._count(status)  # first: whoever sees the file in done/ sees the count
        if self.forwarder is not None:  # before done/: a crash in between offers it again
            self.forwarder.offer(t.data)
        self._done(t.claim)
        log.info("%s: %s %s", printable(t.claim.name), status, what)

    # -- the spool ----------------------------------------------------------------------

    def _watch(self) -> None:
        """Watch the spool directory (again, after it was made anew)."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
        self._observer = Observer()
        self._observer.schedule(_SpoolEvents(self.cfg.spool, self.inbox), self.cfg.spool,
                                recursive=False)
        self._observer.start()

    def _rewatch_if_moved(self) -> bool:
        """Watch the spool anew when its directory was moved or made again; True then."""
        if not self.spool.moved():
            return False
        log.warning("%s: the spool directory was moved or made anew; watching the new one",
                    self.cfg.spool)
        try:
            self.spool.ensure()
            self._watch()
        except OSError as exc:
            log.error("%s: cannot use the new spool directory: %s", self.cfg.spool, exc)
        return True

    def rescan(self) -> None:
        """Queue every waiting file (the queue drops names queued twice)."""
        try:
            names = self.spool.waiting()
        except OSError as exc:
            log.error("%s", exc if isinstance(exc, UnsafeSpool) else
                      f"{self.cfg.spool}: cannot list the spool: {exc}")
            return
        for name in names:
            self.inbox.offer(name)

    def _may_take(self) -> bool:
        return not self.stopping and self._retry_at is None and self.store_why is None

    def _drain(self) -> None:
        """Process queued names in order until none is left, a stop is asked for, or a
        database or resource error asks to wait (the names stay queued).

        The parser child parses ahead of the store: the files read are handed to it in
        order (up to _BATCH_FILES files or _BATCH_BYTES ahead), and what it has parsed is
        stored together in one transaction when the batch is full or the next file is not
        parsed yet, while it goes on with the next ones. In a reboot wave the two then
        take turns instead of waiting for each other: each was about half of a file's
        time."""
        if not self.inbox.names or not self._may_take():
            return
        ahead: collections.deque[_Ahead] = collections.deque()
        ahead_bytes = 0
        taken: list[_Taken] = []
        size = 0
        while True:
            while (self.inbox.names and self._may_take() and len(ahead) < _BATCH_FILES
                   and ahead_bytes < _BATCH_BYTES):
                read = self._claim_and_read(self.inbox.take())
                self._heartbeat()
                if read is not None:
                    claim, data = read
                    ahead.append(_Ahead(claim, data, self._parsing.submit(self.parser.parse, data)))
                    ahead_bytes += len(data)
            if self.stopping:  # the files not stored yet wait for the next start
                self._put_back_ahead(ahead, "back in the spool at the stop", _DB_RETRY_S)
            if taken and (not ahead or len(taken) >= _BATCH_FILES or size >= _BATCH_BYTES
                          or not ahead[0].parsing.done()):
                if not self._store(taken):
                    self._put_back_ahead(ahead, "waits with the files before it", _DB_RETRY_S)
                taken, size = [], 0
                continue
            if not ahead:
                break
            a = ahead.popleft()
            ahead_bytes -= len(a.data)
            if (t := self._parsed(a)) is not None:
                taken.append(t)
                size += len(t.data)
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
        if result.status == "refused":
            log.error("capture of this boot: the database refused it: %s", result.why)
            self._count("failed")
            return
        self._count(result.status)
        if self.forwarder is not None:
            self.forwarder.offer(data)
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
        for name in self.spool.recover():
            log.info("%s: taken before the last stop, not finished; back in the spool",
                     printable(name))
        # Everything imported and built so far lives as long as the process: a full
        # collection need not walk it again at every scrape's garbage (a p99 outlier).
        gc.freeze()
        if self.fleet is not None:
            self.fleet.start()
        # A fleet daemon takes hosts' files by POST into its spool (exporters/receive.py).
        receiver = (Receiver(self.spool, self.registry, arrived=self.inbox.arrived)
                    if self.cfg.fleet else None)
        self.web = WebServer(self.cfg.listen, self.cfg.telemetry_path, self.registry,
                             self._landing, self.fleet.body if self.fleet is not None else None,
                             web_config=self.cfg.web_config_file, post=receiver,
                             max_body=self.cfg.max_bytes)
        self.web.start()
        if self.forwarder is not None:
            self.forwarder.start()
        signal.set_wakeup_fd(self.inbox.wfd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        overflow = _Overflow(self.inbox)
        logging.getLogger("watchdog.observers.inotify_c").addFilter(overflow)
        self._watch()
        # Before READY: a store that can be used is ready (its schema made) when the daemon
        # says it serves. One that cannot is said once, and READY follows all the same: a
        # connection attempt is bounded (store/db.py), and the daemon serves /metrics while
        # it retries.
        ready = self._check_store()
        url = f"{self.web.scheme}://{self.web.address}{self.web.path}"
        log.info("memledger %s: database %s, spool %s, serving %s", VERSION,
                 display_url(self.cfg.url), self.cfg.spool, url)
        self.notifier.notify("READY=1", f"STATUS=serving {url}")
        self._heartbeat()
        try:
            if ready and self._self_pending:
                self._self_pending = False
                self.capture_self()
            self._prune()
            now = time.monotonic()
            next_prune, next_rescan = now + _PRUNE_EVERY_S, now
            while not self.stopping:
                now = time.monotonic()
                if self._hup:
                    self._hup = False
                    log.info("SIGHUP: rescanning the spool"
                             + (", forwarding again now" if self.forwarder else ""))
                    next_rescan, self._retry_at = now, None
                    if self.forwarder is not None:
                        self.forwarder.kick()
                if self.inbox.rescan.is_set():
                    self.inbox.rescan.clear()
                    log.warning("the inotify queue overflowed; rescanning the spool")
                    next_rescan = now
                if self._retry_at is not None and now >= self._retry_at:
                    self._retry_at = None
                    next_rescan = now
                if (self.store_why is not None and now >= self._store_check_at
                        and self._check_store()):
                    next_rescan = now
                    if self._self_pending:
                        self._self_pending = False
                        self.capture_self()
                if now >= next_rescan:
                    self._rewatch_if_moved()
                    if self.store_why is None:
                        self._check_store()  # a later memledger may have migrated it
                    self.rescan()
                    next_rescan = now + self.cfg.rescan_s
                self._drain()
                self._heartbeat()
                if now >= next_prune:
                    self._prune()
                    next_prune = now + _PRUNE_EVERY_S
                if self.stopping or self._hup or (self.inbox.names and self._retry_at is None
                                                  and self.store_why is None):
                    continue
                wait = min(_TICK_S, max(0.0, next_rescan - time.monotonic()))
                if self.store_why is not None:
                    wait = min(wait, max(0.0, self._store_check_at - time.monotonic()))
                if self.notifier.watchdog_interval is not None:
                    wait = min(wait, max(0.0, self._next_watchdog - time.monotonic()))
                self.inbox.wait(wait)
                if self._rewatch_if_moved():
                    next_rescan = time.monotonic()
        finally:
            if self._stop_signal is not None:
                log.info("%s: finishing the current capture, then exiting",
                         signal.Signals(self._stop_signal).name)
            self.notifier.notify("STOPPING=1")
            logging.getLogger("watchdog.observers.inotify_c").removeFilter(overflow)
            if self._observer is not None:
                self._observer.stop()
                self._observer.join()
            self.web.stop()
            if self.forwarder is not None:
                self.forwarder.stop()
            if self.fleet is not None:
                self.fleet.stop()
            self._parsing.shutdown(cancel_futures=True)
            self.parser.close()
            signal.set_wakeup_fd(-1)
        log.info("stopped: %s", self._status())
        return 0
