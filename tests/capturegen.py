"""Capture files for the store and daemon tests, built from the real fixture boots.

Each fixture boot (tests/fixtures/boots) is read once; captures of it for many made-up
hosts differ only in their manifest, which is all the store keys boots on.
"""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from memledger.tracer.capture import Manifest, pack
from memledger.tracer.reader import FsTree, RecordingTree, read_tree

__all__ = (
    "BOOTS",
    "BOOT_NAMES",
    "T0",
    "Key",
    "boot_id",
    "machine_id",
    "make_capture",
    "targz",
)

BOOTS = Path(__file__).parent / "fixtures" / "boots"
BOOT_NAMES = sorted(p.name for p in BOOTS.iterdir() if (p / "root").is_dir())
T0 = datetime(2026, 11, 1, tzinfo=UTC)
Key = tuple[str, str]


def machine_id(n: int) -> str:
    return hashlib.md5(f"host-{n}".encode()).hexdigest()


def boot_id(n: int, b: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"boot-{n}-{b}".encode()).hexdigest()))


def _record(root: Path) -> tuple[dict[str, bytes], frozenset[str]]:
    rec = RecordingTree(FsTree(root))
    read_tree(rec, str(root))
    return rec.files, frozenset(rec.dirs)


@functools.cache
def _recorded(name: str) -> tuple[dict[str, bytes], frozenset[str]]:
    return _record(BOOTS / name / "root")


def make_capture(name: str | Path, host: int, boot: int, minutes: int = 0, *,
                 captured_at: datetime | None = None, uptime_s: float | None = None,
                 hostname: str | None = None, machine: str | None = None,
                 extra: dict[str, bytes] | None = None) -> bytes:
    """Fixture boot ``name`` (or the tree at a path) as boot ``boot`` of host ``host``,
    captured at T0 + minutes (or ``captured_at``), named ``host-N`` (or ``hostname``),
    with a /proc/uptime of ``uptime_s`` when given, the machine id ``machine`` instead of
    host N's, and ``extra`` files added to the tree (path → bytes)."""
    files, dirs = _record(name) if isinstance(name, Path) else _recorded(name)
    files = {**files, **(extra or {})}
    if uptime_s is not None:
        files = {**files, "proc/uptime": f"{uptime_s:.2f} {uptime_s * 1.9:.2f}\n".encode()}
    m = Manifest(machine_id=machine or machine_id(host), boot_id=boot_id(host, boot),
                 captured_at=captured_at or T0 + timedelta(minutes=minutes),
                 memledger_version="test", hostname=hostname or f"host-{host}")
    return pack(files, set(dirs), m)


def targz(members: dict[str, bytes]) -> bytes:
    """A gzip-compressed tar of regular files (for hand-built, often broken, captures)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
