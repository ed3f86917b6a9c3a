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
from memledger.tracer.runtime import BatchHeader, RuntimeEvent, Source, render_batch

__all__ = ("FILE_MODE", "SpoolWriter")

FILE_MODE = 0o640


@dataclass
class SpoolWriter:
    spool: str
    header: BatchHeader          # its source, written_at and dropped are set per batch
    written: int = 0

    def batch(self, source: Source, events: Sequence[RuntimeEvent], dropped: int = 0,
              now: datetime | None = None) -> str | None:
        """Write one batch; None (nothing written) when there is nothing to say."""
        if not events and not dropped:
            return None
        now = now or datetime.now(UTC)
        head = replace(self.header, source=source, written_at=now, dropped=dropped)
        self.written += 1
        name = (f"{head.machine_id}-{head.boot_id}-{source}-"
                f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{self.written}.jsonl")
        atomic_write(os.path.join(self.spool, name), render_batch(head, events), FILE_MODE)
        return name

    def capture(self, name: str, data: bytes) -> str:
        atomic_write(os.path.join(self.spool, name), data, FILE_MODE)
        return name
