"""Hand event batches and captures to the daemon through its spool.

Files are written the spool's way (a dot-named temporary file, fsync, rename, fsync of
the directory), group-readable, so that the daemon, running as another user in the
spool's group, can read them; the spool directory is setgid to that group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from memledger.store.files import atomic_write
from memledger.tracer.runtime import MAX_EVENTS, BatchHeader, RuntimeEvent, Source, render_batch

__all__ = ("FILE_MODE", "SpoolWriter")

FILE_MODE = 0o640


@dataclass
class SpoolWriter:
    spool: str
    header: BatchHeader          # its source, written_at and dropped are set per batch
    written: int = 0

    def batch(self, source: Source, events: Sequence[RuntimeEvent], dropped: int = 0,
              now: datetime | None = None) -> list[str]:
        """Write the events as batches of at most MAX_EVENTS (the daemon's cap), ``dropped``
        in the first; returns their names (none when there is nothing to say)."""
        if not events and not dropped:
            return []
        now = now or datetime.now(UTC)
        names = []
        for start in range(0, max(len(events), 1), MAX_EVENTS):
            head = replace(self.header, source=source, written_at=now,
                           dropped=dropped if start == 0 else 0)
            self.written += 1
            name = (f"{head.machine_id}-{head.boot_id}-{source}-"
                    f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{self.written}.jsonl")
            atomic_write(os.path.join(self.spool, name),
                         render_batch(head, events[start:start + MAX_EVENTS]), FILE_MODE)
            names.append(name)
        return names

    def capture(self, name: str, data: bytes) -> str:
        atomic_write(os.path.join(self.spool, name), data, FILE_MODE)
        return name
