"""/dev/kmsg records, their sequence numbers, and the ones about memory (pure).

Each read(2) of /dev/kmsg returns one record (Documentation/ABI/testing/dev-kmsg)::

    6,1234,812250000,-;Freeing reserve_mem:trace memory: 4096K
     SUBSYSTEM=…                     (optional continuation lines, dictionary)

The fields are ``prio`` (facility << 3 | level), the 64-bit sequence number, the
timestamp in microseconds since boot, flags (``-``, or ``c`` for a continuation), and
the message, with non-printable bytes escaped as ``\\xNN``. Sequence numbers go up by
one per record; when the ring buffer overwrites records before a reader gets them, the
next read fails with EPIPE and the following record's number jumps. :class:`SeqTracker`
turns those jumps into a count of lost records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memledger.tracer.runtime import RuntimeEvent

__all__ = ("KmsgRecord", "SeqTracker", "memory_event", "parse_record")

# The kernel prints prio as an int and the sequence number and microseconds as u64s: at
# most 10 and 20 digits. Longer numbers are not a record (and would overflow a float).
_HEAD = re.compile(rb"^(\d{1,10}),(\d{1,20}),(\d{1,20}),([^;,]*)[^;]*;")
# Messages about memory that can appear after boot: free_reserved_area()'s "Freeing %s
# memory: %ldK" (late initrd, reserve_mem release) and memory hotplug.
_FREEING = re.compile(r"^Freeing (?P<what>.+?) memory: (?P<kib>\d+)K$")
_MEMORY = re.compile(
    r"^(?:Freeing |crashkernel|Crash kernel|kexec|reserve_mem|memory_hotplug|"
    r"Built \d+ zonelists|Memory: |Offlined Pages|Onlined Pages|efi: )|"
    r"(?:memory|Memory) (?:hot-?(?:add|remove|plug)|offlin|onlin)"
)


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    seq: int
    ts: float          # seconds since boot
    level: int
    facility: int
    message: str


def parse_record(raw: bytes) -> KmsgRecord | None:
    """One record as read(2) returns it; None when it is not in the kmsg format."""
    m = _HEAD.match(raw)
    if m is None:
        return None
    prio = int(m.group(1))
    body = raw[m.end():].split(b"\n", 1)[0]
    return KmsgRecord(int(m.group(2)), int(m.group(3)) / 1e6, prio & 7, prio >> 3,
                      body.decode("utf-8", "backslashreplace"))


class SeqTracker:
    """Counts the records lost between reads, from the sequence numbers."""

    def __init__(self, last: int | None = None) -> None:
        self.last = last
        self.dropped = 0

    def see(self, seq: int) -> int:
        """Note a record; returns how many records before it were lost (0 normally).

        A number at or below the last one seen is a record already read (returns -1),
        which happens when a reader re-opens the device and starts over.
        """
        if self.last is not None and seq <= self.last:
            return -1
        gap = 0 if self.last is None else seq - self.last - 1
        self.last = seq
        self.dropped += gap
        return gap


def memory_event(rec: KmsgRecord, seq: int) -> RuntimeEvent | None:
    """A ``log`` event for a kernel-log record about memory; None for other records.

    Only kernel records count (facility 0): anything written to /dev/kmsg from user
    space has facility 1 (LOG_USER) unless it says otherwise, and cannot pose as the
    kernel's ``Freeing … memory`` line.
    """
    if rec.facility != 0 or not _MEMORY.search(rec.message):
        return None
    size: int | None = None
    function = "kmsg"
    if (m := _FREEING.match(rec.message)) is not None:
        size = int(m.group("kib")) * 1024
        function = f"Freeing {m.group('what')}"
    return RuntimeEvent(seq=seq, ts=rec.ts, kind="log", function=function[:64], bytes=size,
                        detail=f"kmsg seq {rec.seq}: {rec.message}"[:1000])
