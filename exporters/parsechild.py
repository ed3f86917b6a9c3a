"""Parse spool files in a child process, under a memory cap and a deadline.

Parsing is the one step whose cost a spool writer controls: a capture inflates up to
MAX_UNPACKED_BYTES (64 MiB), with a log of up to 32 MiB, and parsing costs about 6 bytes
of memory per byte of log and half a second per 32 MiB (bench/run.py, parse-cost). Run
in the daemon itself, a file that costs more (or a parser bug that loops) would stop the
main loop and its watchdog pings, systemd would kill the daemon, and the restarted daemon
would take the same file again. In a child:

- the child's data segment is capped (RLIMIT_DATA, which counts heap and anonymous
  mappings since Linux 4.7), so running out is a MemoryError there, reported as a refusal;
- the parent's thread that waits for the child does so in short steps, against the
  deadline, while the daemon's main loop goes on with its watchdog pings;
- past the deadline the child is killed and the file refused; a new child starts for the
  next file.

One long-lived child (started through a forkserver, never a fork of the daemon's threads)
parses file after file; it sends back the parsed capture without its bytes, which the
parent already holds. A fleet daemon keeps a few (:class:`ParserPool`): in a reboot wave
parsing is a third of the CPU a capture costs, and one child keeps one core busy at most.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import resource
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from memledger.store.ingest import BadCapture, Prepared, prepare
from memledger.tracer.runtime import Batch, BatchError, is_batch, parse_batch

__all__ = ("MEMORY_LIMIT", "TIME_LIMIT_S", "ParseChild", "Parsed", "ParserPool", "Unparsable")

# Measured (parse-cost): a 32 MiB log, the largest a capture holds, peaks at 215 MiB in
# 0.5 s; the cap leaves room for a parser that gets costlier, the deadline for a slow or
# busy machine.
MEMORY_LIMIT = 1 << 30
TIME_LIMIT_S = 60.0
# Short enough for any watchdog interval (systemd asks for half of WatchdogSec=).
_STEP_S = 0.1
# Far below a socket's send buffer (net.core.wmem_default, 208 KiB on Linux).
_DIRECT_MAX = 64 << 10


class Unparsable(Exception):
    """The file is refused; the message is one line. ``internal`` marks a parser bug."""

    def __init__(self, message: str, internal: bool = False) -> None:
        super().__init__(message)
        self.internal = internal


@dataclass(slots=True)
class Parsed:
    """A parsed spool file: a capture ready to store, or an event batch."""

    capture: Prepared | None = None
    batch: Batch | None = None


def _child_main(conn: Connection, version: str, memory_limit: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard == resource.RLIM_INFINITY or memory_limit < hard:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, hard))
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        try:
            if is_batch(data):
                reply: tuple[str, object] = ("ok", Parsed(batch=parse_batch(data)))
            else:
                p = prepare(data, version)
                p.data = b""  # the parent holds the bytes
                reply = ("ok", Parsed(capture=p))
        except (BadCapture, BatchError) as exc:
            reply = ("bad", str(exc))
        except MemoryError:
            reply = ("bad", f"parsing it needs more than {memory_limit >> 20} MiB of memory")
        except Exception as exc:  # a parser bug: the file is refused, the child lives on
            reply = ("internal", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("bad", f"its parsed form needs more than {memory_limit >> 20} MiB"))


def _send(conn: Connection, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the child died or was killed: parse() says so
        conn.send_bytes(data)


class ParseChild:
    """The child that parses; started on first use and again after it is killed."""

    def __init__(self, version: str, memory_limit: int = MEMORY_LIMIT,
                 time_limit_s: float = TIME_LIMIT_S) -> None:
        self.version = version
        self.memory_limit = memory_limit
        self.time_limit_s = time_limit_s
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["memledger.store.ingest", "memledger.tracer.runtime"])
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._sender: threading.Thread | None = None

    def _start(self) -> Connection:
        if self._conn is None or self._proc is None or not self._proc.is_alive():
            self.close()
            parent, child = self._ctx.Pipe()
            self._proc = self._ctx.Process(target=_child_main, name="memledger-parse",
                                           args=(child, self.version, self.memory_limit),
                                           daemon=True)
            self._proc.start()
            child.close()
            self._conn = parent
        return self._conn

    def parse(self, data: bytes) -> Parsed:
        """Parse one spool file's bytes. Raises :class:`Unparsable` for a refusal and
        OSError when the child cannot be started (out of processes or descriptors)."""
        conn = self._start()
        deadline = time.monotonic() + self.time_limit_s
        # A larger file is sent from a thread: a child that stopped reading cannot block
        # the loop, and the deadline still applies. A small one fits the socket's buffer,
        # which is empty (the child read every earlier byte before it answered), so the
        # send cannot block: it is sent here (starting a thread costs more than parsing a
        # small capture when the machine is busy).
        sender = None
        if len(data) > _DIRECT_MAX:
            sender = self._sender = threading.Thread(target=_send, args=(conn, data),
                                                     name="parse-send", daemon=True)
        try:
            if sender is not None:
                sender.start()
            else:
                _send(conn, data)
            while not conn.poll(min(_STEP_S, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    self.close()
                    raise Unparsable(f"parsing it took more than {self.time_limit_s:.0f} s")
            kind, value = conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            if self._proc is not None:
                self._proc.join(1)  # reaped, so that its exit status is known
            code = self._proc.exitcode if self._proc is not None else None
            self.close()
            how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exited {code}")
            raise Unparsable(f"the parser process was {how} while parsing it") from None
        finally:
            if sender is not None:
                sender.join(_STEP_S)
        if kind == "ok":
            parsed: Parsed = value
            if parsed.capture is not None:
                parsed.capture.data = data
            return parsed
        raise Unparsable(str(value), internal=kind == "internal")

    def close(self) -> None:
        """Kill the child; the connection is closed only once nothing writes to it (a
        sender blocked on a dead child ends with an error first)."""
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
            self._proc = None
        if self._sender is not None:
            self._sender.join(5)
            self._sender = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ParserPool:
    """``size`` parser children, each parsing one file at a time for whichever thread
    asked first; a child is started on first use."""

    def __init__(self, size: int, version: str, memory_limit: int = MEMORY_LIMIT,
                 time_limit_s: float = TIME_LIMIT_S) -> None:
        self._children = [ParseChild(version, memory_limit, time_limit_s) for _ in range(size)]
        self._idle: queue.SimpleQueue[ParseChild] = queue.SimpleQueue()
        for child in self._children:
            self._idle.put(child)

    def parse(self, data: bytes) -> Parsed:
        """:meth:`ParseChild.parse` in the first child free."""
        child = self._idle.get()
        try:
            return child.parse(data)
        finally:
            self._idle.put(child)

    def close(self) -> None:
        for child in self._children:
            child.close()
