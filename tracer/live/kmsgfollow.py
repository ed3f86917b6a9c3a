"""Follow /dev/kmsg without losing track of what was lost.

The device is opened non-blocking; each read returns one record. EPIPE means the ring
buffer overwrote records this reader had not reached yet: the read position has moved
on to the oldest record still there, and :class:`~memledger.tracer.kmsg.SeqTracker`
counts the gap from the next sequence number.
"""

from __future__ import annotations

import errno
import os

from memledger.tracer.kmsg import KmsgRecord, SeqTracker, parse_record

__all__ = ("KmsgFollower",)

_RECORD_MAX = 16384  # the kernel's CONSOLE_EXT_LOG_MAX is 8 KiB; one read returns one record


class KmsgFollower:
    def __init__(self, path: str = "/dev/kmsg", after: int | None = None) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.tracker = SeqTracker(after)
        self.overruns = 0   # EPIPE reads

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, limit: int = 100_000) -> tuple[list[KmsgRecord], int]:
        """Records not seen yet (at most ``limit``), and how many were lost before them."""
        out: list[KmsgRecord] = []
        lost = 0
        while len(out) < limit:
            try:
                raw = os.read(self.fd, _RECORD_MAX)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                self.overruns += 1
                continue
            if not raw:
                break
            rec = parse_record(raw)
            if rec is None:
                continue
            gap = self.tracker.see(rec.seq)
            if gap < 0:
                continue
            lost += gap
            out.append(rec)
        return out, lost

    def last_seq(self) -> int | None:
        return self.tracker.last
