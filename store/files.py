"""Writing files so that a reader never sees half of one (the spool's contract).

A producer writes ``.NAME.tmp-XXXX`` in the target directory, flushes it to disk, and
renames it to ``NAME``; readers ignore names that start with a dot. The directory is
synced too, so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ("atomic_write", "fsync_dir", "is_temporary")


def is_temporary(name: str) -> bool:
    """Names a producer is still writing: dot files and ``*.tmp``/``*.part``."""
    return name.startswith(".") or name.endswith((".tmp", ".part"))


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)

