"""The outbox: files stored here that wait to be sent to the fleet daemons.

Layout::

    OUTBOX/SEQ-SHA256           waiting, oldest first (SEQ: nanoseconds since the epoch
                                when it was queued, 20 digits; SHA256: of its bytes)
    OUTBOX/refused/SEQ-SHA256   refused for good by a fleet daemon, next to
                                SEQ-SHA256.error (one line: which daemon, what it said)

A file is written the spool's way (a dot-named temporary file, fsync, rename, fsync of the
directory), so a crash at any moment leaves it whole or absent, and it is removed only once
a fleet daemon said it has it. The name carries the content's digest: the same bytes are
queued once however often they are offered (a capture ingested again after a crash), and
never again once refused. Names sort in the order files were queued: the sequence is the
clock, kept increasing within a run and past the newest name found at start.

The backlog is bounded (``max_bytes``): a file that would take it over is not queued, and
nothing queued is ever dropped to make room; the caller counts and logs it. Such a file
still waits in the spool's done/ for the spool's retention time, and copying it back into
the spool queues it again (it is ingested as a duplicate and offered anew); a refused file
goes back by moving it from refused/ into the outbox, before a start.

The outbox is the daemon's own, and it holds what is sent with the daemon's credentials:
an outbox directory, or its refused/, that is a symlink, writable by everyone or owned
by another user than this one or root is not used at all (:class:`UnsafeOutbox`), the rule
of the spool's directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import threading
import time
from dataclasses import dataclass

from memledger.spool.reader import UnsafeSpool
from memledger.store.files import atomic_write, fsync_dir, is_temporary
from memledger.tracer.untrusted import shown

__all__ = ("REFUSED", "Outbox", "Queued", "UnsafeOutbox")

REFUSED = "refused"
_NAME = re.compile(r"(\d{20})-([0-9a-f]{64})")
_ERROR_SUFFIX = ".error"
_FILE_MODE = 0o600
_DIR_MODE = 0o700


class UnsafeOutbox(UnsafeSpool):
    """The outbox directory cannot be trusted; nothing is queued or sent. One line."""


@dataclass(frozen=True, slots=True)
class Queued:
    """One waiting file: its name in the outbox, digest, size and when it was queued."""

    name: str
    sha256: str
    size: int
    queued_at: float


def _check(st: os.stat_result, where: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeOutbox(f"{where}: a symlink, not a directory; refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeOutbox(f"{where}: not a directory; refusing to use it")
    if st.st_mode & stat.S_IWOTH:
        raise UnsafeOutbox(f"{where}: world-writable (mode {stat.S_IMODE(st.st_mode):04o}), "
                           "so anyone could queue files to send; refusing to use it (chmod o-w)")
    if st.st_uid not in (os.geteuid(), 0):
        raise UnsafeOutbox(f"{where}: owned by uid {st.st_uid}, not by this user "
                           f"(uid {os.geteuid()}) or root; refusing to use it")


class Outbox:
    """The outbox at ``path``, at most ``max_bytes`` of waiting files. Safe to share
    between the thread that adds and the thread that sends (one lock guards the index)."""

    def __init__(self, path: str, max_bytes: int = 1 << 30) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._queue: dict[str, Queued] = {}
        self._shas: set[str] = set()
        self._refused: set[str] = set()
        self._bytes = 0
        self._last = 0
        self._identity: tuple[int, int] | None = None

    @property
    def refused_dir(self) -> str:
        return os.path.join(self.path, REFUSED)

    # -- the directory --------------------------------------------------------------------

    def open(self) -> None:
        """Create the outbox and refused/ if needed, check them, and index what waits.
        Raises :class:`UnsafeOutbox`, or OSError when it cannot be made or listed."""
        for where in (self.path, self.refused_dir):
            with contextlib.suppress(FileExistsError):
                os.makedirs(where, mode=_DIR_MODE, exist_ok=False)
            _check(os.lstat(where), where)
        st = os.lstat(self.path)
        queue: list[Queued] = []
        refused: set[str] = set()
        with os.scandir(self.path) as it:
            for entry in it:
                m = _NAME.fullmatch(entry.name)
                if m is None or is_temporary(entry.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    est = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(est.st_mode):
                        queue.append(Queued(entry.name, m.group(2), est.st_size,
                                            int(m.group(1)) / 1e9))
        with os.scandir(self.refused_dir) as it:
            for entry in it:
                m = _NAME.fullmatch(entry.name)
                if m is not None:
                    refused.add(m.group(2))
        queue.sort(key=lambda q: q.name)
        with self._lock:
            self._identity = (st.st_dev, st.st_ino)
            self._queue = {q.name: q for q in queue}
            self._shas = {q.sha256 for q in queue}
            self._refused = refused
            self._bytes = sum(q.size for q in queue)
            self._last = max((int(q.name[:20]) for q in queue), default=0)

    def check(self) -> None:
        """Raise :class:`UnsafeOutbox` when the outbox path no longer names the directory
        opened, or it or refused/ became unsafe since."""
        st = os.lstat(self.path)
        _check(st, self.path)
        if (st.st_dev, st.st_ino) != self._identity:
            raise UnsafeOutbox(f"{self.path}: replaced by another directory since the start; "
                               "refusing to use it")
        _check(os.lstat(self.refused_dir), self.refused_dir)

    # -- queueing ---------------------------------------------------------------------------

    def add(self, data: bytes) -> str:
        """Queue ``data``: "queued", "present" (the same bytes wait already), "refused"
        (a fleet daemon refused the same bytes for good) or "full" (it would take the
        backlog over ``max_bytes``; nothing is written). Raises OSError (a full disk) and
        :class:`UnsafeOutbox`."""
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            if sha in self._shas:
                return "present"
            if sha in self._refused:
                return "refused"
            if self._bytes + len(data) > self.max_bytes:
                return "full"
            self.check()
            seq = max(time.time_ns(), self._last + 1)
            name = f"{seq:020d}-{sha}"
            atomic_write(os.path.join(self.path, name), data, _FILE_MODE)
            self._last = seq
            self._queue[name] = Queued(name, sha, len(data), seq / 1e9)
            self._shas.add(sha)
            self._bytes += len(data)
        return "queued"

    def oldest(self) -> Queued | None:
        with self._lock:
            return next(iter(self._queue.values()), None)

    def backlog(self) -> tuple[int, int, float | None]:
        """Files waiting, their bytes, and when the oldest was queued (Unix time)."""
        with self._lock:
            first = next(iter(self._queue.values()), None)
            return len(self._queue), self._bytes, first.queued_at if first else None

    def read(self, q: Queued) -> bytes:
        """The bytes of a waiting file (a regular file only, never through a symlink).
        Raises OSError."""
        fd = os.open(os.path.join(self.path, q.name),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise OSError(f"{q.name}: not a regular file")
            return fh.read()

    def _forget(self, q: Queued) -> None:
        if self._queue.pop(q.name, None) is not None:
            self._shas.discard(q.sha256)
            self._bytes -= q.size

    def remove(self, q: Queued) -> None:
        """Sent: delete it (already gone is fine)."""
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, q.name))
            self._forget(q)

    def drop(self, q: Queued) -> None:
        """Forget a file that vanished from the outbox (removed by hand)."""
        with self._lock:
            self._forget(q)

    def refuse(self, q: Queued, why: str) -> str:
        """Refused for good: move it to refused/ after writing ``NAME.error`` (one line,
        control characters escaped); returns its path there."""
        line = shown(" ".join(why.split())) or "refused"
        with self._lock:
            self.check()
            atomic_write(os.path.join(self.refused_dir, q.name + _ERROR_SUFFIX),
                         line.encode("utf-8", "backslashreplace") + b"\n", _FILE_MODE)
            target = os.path.join(self.refused_dir, q.name)
            os.rename(os.path.join(self.path, q.name), target)
            fsync_dir(self.path)
            self._forget(q)
            self._refused.add(q.sha256)
        return target
