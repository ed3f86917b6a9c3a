"""The spool directory: capture files waiting to be ingested, and where they go after.

Layout::

    SPOOL/NAME            waiting (producers write .NAME.tmp-… and rename it to NAME)
    SPOOL/done/NAME       ingested (or a duplicate); pruned after the retention time
    SPOOL/failed/NAME     refused or unreadable, next to NAME.error saying why

A file leaves the spool only after the database committed it, so a crash at any moment
leaves it in place for the next start; a second ingest of it is a counted duplicate.
Symlinks, FIFOs, devices, directories and files over the size cap are refused without
being opened for reading.

Who may drop files: the spool trusts only this process's user and root (the collector
runs as root's uid without CAP_DAC_OVERRIDE; memledger.tmpfiles makes the spool setgid
memledger, mode 2770). A file owned by anyone else, or writable by everyone, is refused
into failed/. A spool directory that is world-writable or owned by anyone else is not
read at all (:class:`UnsafeSpool`): anybody could have put anything there. This is the
rule OpenSSH's StrictModes applies to authorized_keys, and cron to its spool.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass

from memledger.store.files import atomic_write, fsync_dir, is_temporary

__all__ = ("DONE", "FAILED", "Refused", "Spool", "UnsafeSpool")

DONE = "done"
FAILED = "failed"
_ERROR_SUFFIX = ".error"


class Refused(Exception):
    """The spool entry is not something memledger reads; the message says what it is."""


class UnsafeSpool(OSError):
    """The spool directory itself cannot be trusted; nothing in it is read. One line."""


def _trusted_uids() -> frozenset[int]:
    return frozenset((os.geteuid(), 0))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


@dataclass(slots=True)
class Spool:
    path: str
    max_bytes: int = 64 << 20

    @property
    def done(self) -> str:
        return os.path.join(self.path, DONE)

    @property
    def failed(self) -> str:
        return os.path.join(self.path, FAILED)

    def ensure(self) -> None:
        """Create the spool (and done/, failed/) if needed; raises :class:`UnsafeSpool`."""
        for d in (self.path, self.done, self.failed):
            os.makedirs(d, mode=0o750, exist_ok=True)
        self.check()

    def check(self) -> None:
        """Raise :class:`UnsafeSpool` when the directory is world-writable or owned by
        anyone but this user or root (a symlink to a directory is followed)."""
        st = os.stat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeSpool(f"{self.path}: not a directory")
        if st.st_mode & stat.S_IWOTH:
            raise UnsafeSpool(f"{self.path}: world-writable (mode {stat.S_IMODE(st.st_mode):04o}), "
                              "so anyone could drop files; refusing to read it (chmod o-w)")
        if st.st_uid not in _trusted_uids():
            raise UnsafeSpool(f"{self.path}: owned by uid {st.st_uid}, not by this user "
                              f"(uid {os.geteuid()}) or root; refusing to read it")

    def waiting(self) -> list[str]:
        """Names waiting in the spool, oldest first. Raises :class:`UnsafeSpool`."""
        self.check()
        out: list[tuple[int, str]] = []
        with os.scandir(self.path) as it:
            for entry in it:
                if entry.name in (DONE, FAILED) or is_temporary(entry.name):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                except FileNotFoundError:
                    continue
                out.append((mtime, entry.name))
        return [name for _, name in sorted(out)]

    def read(self, name: str) -> bytes | None:
        """The file's bytes; None when it is gone. Raises :class:`Refused` for the file,
        :class:`UnsafeSpool` for the directory."""
        self.check()
        path = os.path.join(self.path, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{_kind(st.st_mode)}, not a regular file")
        if st.st_uid not in _trusted_uids():
            raise Refused(f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}) "
                          "or root")
        if st.st_mode & stat.S_IWOTH:
            raise Refused(f"world-writable (mode {stat.S_IMODE(st.st_mode):04o})")
        if st.st_size > self.max_bytes:
            raise Refused(f"{st.st_size} bytes is over the {self.max_bytes}-byte cap")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as fh:
            now = os.fstat(fh.fileno())
            if not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino \
                    or now.st_uid != st.st_uid or now.st_mode & stat.S_IWOTH:
                raise Refused("replaced while being opened")
            data = fh.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise Refused(f"grew over the {self.max_bytes}-byte cap")
        return data

    @staticmethod
    def _free_name(directory: str, name: str) -> str:
        target, n = name, 0
        while os.path.lexists(os.path.join(directory, target)) or \
                os.path.lexists(os.path.join(directory, target + _ERROR_SUFFIX)):
            n += 1
            target = f"{name}.{n}"
        return target

    def mark_done(self, name: str) -> str:
        """Move to done/; its time stamp becomes the ingest time (for the retention)."""
        target = self._free_name(self.done, name)
        dest = os.path.join(self.done, target)
        os.rename(os.path.join(self.path, name), dest)
        with contextlib.suppress(OSError):
            os.utime(dest, follow_symlinks=False)
        fsync_dir(self.path)
        return target

    def mark_failed(self, name: str, why: str) -> str:
        """Move to failed/ with ``NAME.error`` (written first, so the reason is never lost)."""
        target = self._free_name(self.failed, name)
        atomic_write(os.path.join(self.failed, target + _ERROR_SUFFIX),
                     why.rstrip("\n").encode() + b"\n")
        os.rename(os.path.join(self.path, name), os.path.join(self.failed, target))
        fsync_dir(self.path)
        return target

    def prune_done(self, retention_s: float, now: float | None = None) -> int:
        """Delete done/ files older than the retention time; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        with os.scandir(self.done) as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat(follow_symlinks=False).st_mtime >= retention_s:
                        os.unlink(entry.path)
                        removed += 1
        return removed
