"""The spool directory: capture files waiting to be ingested, and where they go after.

Layout::

    SPOOL/NAME              waiting (producers write .NAME.tmp-… and rename it to NAME)
    SPOOL/inflight/NAME     claimed: being read and stored (back to SPOOL/ at start)
    SPOOL/done/NAME         ingested (or a duplicate); pruned after the retention time
    SPOOL/failed/NAME       refused, next to NAME.error saying why

A file is claimed, by a rename into inflight/, before it is read, so a later file renamed
in under the same name waits its turn instead of being moved away with the first one's
fate. It leaves inflight/ only after the database committed it, so a crash at any moment
leaves it in place: the next start moves inflight/ back into the spool, and a second
ingest of a stored file is a counted duplicate. Symlinks, FIFOs, devices, directories and
files over the size cap are refused without being opened for reading.

Who may drop files: the spool trusts only this process's user and root (the collector
runs as root's uid without CAP_DAC_OVERRIDE; memledger.tmpfiles makes the spool setgid
memledger, mode 2770). A file owned by anyone else, or writable by everyone, is refused
into failed/. A spool directory, or a done/, failed/ or inflight/ in it, that is a
symlink, world-writable or owned by anyone else is not used at all (:class:`UnsafeSpool`):
anybody could have put anything there, or pointed pruning at other files. This is the
rule OpenSSH's StrictModes applies to authorized_keys, and cron to its spool.

Every operation goes through descriptors of the four directories, opened once by
:meth:`Spool.ensure` without following symlinks, so swapping a directory for a symlink
later redirects nothing. :meth:`Spool.moved` tells when the spool path names another
directory than the one held (moved aside and made again); ``ensure`` again then.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from memledger.store.files import atomic_write, is_temporary
from memledger.tracer.untrusted import shown

__all__ = ("DONE", "FAILED", "INFLIGHT", "Claim", "Refused", "Spool", "UnsafeSpool")

DONE = "done"
FAILED = "failed"
INFLIGHT = "inflight"
_SUBDIRS = (INFLIGHT, DONE, FAILED)
_ERROR_SUFFIX = ".error"
# NAME_MAX: a name in failed/ must leave room for ".error" and a ".N" to tell names apart.
_NAME_MAX = 255
_ROOM = len(_ERROR_SUFFIX) + 8
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class Refused(Exception):
    """The spool entry is not something memledger reads; the message says what it is."""


class UnsafeSpool(OSError):
    """The spool directory itself cannot be trusted; nothing in it is read. One line."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A spool file taken for reading: ``name`` in the spool, ``slot`` in inflight/."""

    name: str
    slot: str


def _trusted_uids() -> frozenset[int]:
    return frozenset((os.geteuid(), 0))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _check_dir(st: os.stat_result, where: str) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSpool(f"{where}: {_kind(st.st_mode)}, not a directory; refusing to use it")
    if st.st_mode & stat.S_IWOTH:
        raise UnsafeSpool(f"{where}: world-writable (mode {stat.S_IMODE(st.st_mode):04o}), "
                          "so anyone could drop files; refusing to read it (chmod o-w)")
    if st.st_uid not in _trusted_uids():
        raise UnsafeSpool(f"{where}: owned by uid {st.st_uid}, not by this user "
                          f"(uid {os.geteuid()}) or root; refusing to read it")


def _fitting(name: str) -> str:
    """``name``, or a shorter name that leaves room for suffixes (a prefix and a digest)."""
    if len(name.encode("utf-8", "surrogateescape")) + _ROOM <= _NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    head = name.encode("utf-8", "surrogateescape")[:_NAME_MAX - _ROOM - 17]
    return head.decode("utf-8", "ignore") + "-" + digest


@dataclass(slots=True)
class Spool:
    path: str
    max_bytes: int = 16 << 20
    _fds: dict[str, int] = field(default_factory=dict)
    _identity: tuple[int, int] | None = None

    @property
    def done(self) -> str:
        return os.path.join(self.path, DONE)

    @property
    def failed(self) -> str:
        return os.path.join(self.path, FAILED)

    @property
    def inflight(self) -> str:
        return os.path.join(self.path, INFLIGHT)

    # -- the directories ----------------------------------------------------------------

    def ensure(self) -> None:
        """Create the spool and its subdirectories if needed and hold them open. Raises
        :class:`UnsafeSpool` (a symlink to a directory is followed for the spool itself,
        never for its subdirectories)."""
        self.close()
        os.makedirs(self.path, mode=0o750, exist_ok=True)
        fds: dict[str, int] = {}
        try:
            fds[""] = os.open(self.path, _DIR_FLAGS)
            _check_dir(os.fstat(fds[""]), self.path)
            for sub in _SUBDIRS:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(sub, 0o750, dir_fd=fds[""])
                where = os.path.join(self.path, sub)
                try:
                    fds[sub] = os.open(sub, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fds[""])
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafeSpool(f"{where}: {_kind(os.lstat(where).st_mode)}, not a "
                                          "directory; refusing to use it") from None
                    raise
                _check_dir(os.fstat(fds[sub]), where)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        self._fds = fds
        st = os.fstat(fds[""])
        self._identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def moved(self) -> bool:
        """True when the spool path no longer names the directory held (it was moved
        aside or removed, and perhaps made again)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def check(self) -> None:
        """Raise :class:`UnsafeSpool` when the spool or a subdirectory has become
        world-writable or changed owner since :meth:`ensure`."""
        for sub, fd in self._fds.items():
            _check_dir(os.fstat(fd), os.path.join(self.path, sub))

    def _fd(self, sub: str = "") -> int:
        if not self._fds:
            self.ensure()
        return self._fds[sub]

    # -- waiting files ------------------------------------------------------------------

    def _entries(self, sub: str = "") -> list[tuple[int, str]]:
        """(mtime in ns, name) of the entries a producer has finished, oldest first."""
        out: list[tuple[int, str]] = []
        with os.scandir(self._fd(sub)) as it:
            for entry in it:
                if (not sub and entry.name in _SUBDIRS) or is_temporary(entry.name):
                    continue
                try:
                    out.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
                except FileNotFoundError:
                    continue
        return sorted(out)

    def waiting(self) -> list[str]:
        """Names waiting in the spool, oldest first. Raises :class:`UnsafeSpool`."""
        self.check()
        return [name for _, name in self._entries()]

    def _waiting_entries(self) -> Iterator[os.DirEntry[str]]:
        """The entries that wait (inflight/ included), read by path: safe from any thread."""
        for d in (self.path, self.inflight):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(d) as it:
                yield from (entry for entry in it
                            if not (d == self.path and entry.name in _SUBDIRS)
                            and not is_temporary(entry.name))

    def backlog(self) -> tuple[int, float | None]:
        """How many files wait (inflight/ included) and the mtime of the oldest (Unix
        time), for metrics; read by path, so it is safe from any thread."""
        count, oldest = 0, None
        for entry in self._waiting_entries():
            with contextlib.suppress(OSError):
                mtime = entry.stat(follow_symlinks=False).st_mtime
                count += 1
                oldest = mtime if oldest is None else min(oldest, mtime)
        return count, oldest

    def count_waiting(self) -> int:
        """How many files wait (inflight/ included), without a stat of each: cheaper than
        :meth:`backlog`; by path, so it is safe from any thread."""
        return sum(1 for _ in self._waiting_entries())

    def holds(self, name: str) -> bool:
        """Whether ``name`` waits, is being stored or was stored (done/); by path, so it is
        safe from any thread."""
        return any(os.path.lexists(os.path.join(d, name))
                   for d in (self.path, self.inflight, self.done))

    def put(self, name: str, data: bytes) -> None:
        """Write a file into the spool the producers' way (fsync, rename, fsync of the
        directory): once this returns, the file survives a crash. By path, so it is safe
        from any thread."""
        atomic_write(os.path.join(self.path, name), data, 0o640)

    def recover(self) -> list[str]:
        """Move files left in inflight/ (by a crash) back into the spool; their names."""
        back = []
        for _, slot in self._entries(INFLIGHT):
            name = self._free_name("", slot)
            with contextlib.suppress(FileNotFoundError):
                os.rename(slot, name, src_dir_fd=self._fd(INFLIGHT), dst_dir_fd=self._fd())
                back.append(name)
        return back

    # -- one file -----------------------------------------------------------------------

    def claim(self, name: str) -> Claim | None:
        """Take ``name`` out of the spool into inflight/ (None when it is gone: another
        event for the same file, or a second daemon took it). Raises
        :class:`UnsafeSpool`."""
        self.check()
        slot = self._free_name(INFLIGHT, name)
        try:
            os.rename(name, slot, src_dir_fd=self._fd(), dst_dir_fd=self._fd(INFLIGHT))
        except FileNotFoundError:
            return None
        return Claim(name, slot)

    def release(self, claim: Claim) -> str:
        """Put a claimed file back into the spool, to be read later; its name there."""
        name = self._free_name("", claim.name)
        os.rename(claim.slot, name, src_dir_fd=self._fd(INFLIGHT), dst_dir_fd=self._fd())
        return name

    def read(self, claim: Claim) -> bytes:
        """The claimed file's bytes. Raises :class:`Refused` for what is not a regular
        file this user or root wrote, or is too big."""
        fd_dir = self._fd(INFLIGHT)
        st = os.lstat(claim.slot, dir_fd=fd_dir)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{_kind(st.st_mode)}, not a regular file")
        if st.st_uid not in _trusted_uids():
            raise Refused(f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}) "
                          "or root")
        if st.st_mode & stat.S_IWOTH:
            raise Refused(f"world-writable (mode {stat.S_IMODE(st.st_mode):04o})")
        if st.st_size > self.max_bytes:
            raise Refused(f"{st.st_size} bytes is over the {self.max_bytes}-byte cap")
        fd = os.open(claim.slot, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=fd_dir)
        with os.fdopen(fd, "rb") as fh:
            now = os.fstat(fh.fileno())
            if not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino \
                    or now.st_uid != st.st_uid or now.st_mode & stat.S_IWOTH:
                raise Refused("replaced while being opened")
            data = fh.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise Refused(f"grew over the {self.max_bytes}-byte cap")
        return data

    def _free_name(self, sub: str, name: str) -> str:
        """A name for ``name`` in ``sub`` that nothing holds (nor ``NAME.error``)."""
        base = _fitting(name)
        target, n = base, 0
        fd = self._fd(sub)
        while any(_exists(t, fd) for t in (target, target + _ERROR_SUFFIX)):
            n += 1
            target = f"{base}.{n}"
        return target

    def mark_done(self, claim: Claim, sync: bool = True) -> str:
        """Move to done/; its time stamp becomes the ingest time (for the retention).
        ``sync=False`` leaves the move to :meth:`sync_done` (one directory sync for many
        files: a move lost in a crash brings the file back from inflight/ at the next
        start, where it is a duplicate)."""
        target = self._free_name(DONE, claim.name)
        os.rename(claim.slot, target, src_dir_fd=self._fd(INFLIGHT), dst_dir_fd=self._fd(DONE))
        with contextlib.suppress(OSError):
            os.utime(target, dir_fd=self._fd(DONE), follow_symlinks=False)
        if sync:
            self.sync_done()
        return target

    def sync_done(self) -> None:
        """Make the moves to done/ so far durable."""
        os.fsync(self._fd(INFLIGHT))

    def mark_failed(self, claim: Claim, why: str) -> str:
        """Move to failed/ with ``NAME.error`` (written first, so the reason is never lost)."""
        fd = self._fd(FAILED)
        target = self._free_name(FAILED, claim.name)
        tmp = f".{target[:_NAME_MAX - 16]}.tmp-{os.getpid()}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o640, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as fh:
                # One line, whatever the reason quotes: control characters escaped.
                fh.write(shown(why.strip()).encode("utf-8", "backslashreplace") + b"\n"
                         if why.strip() else b"refused\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, target + _ERROR_SUFFIX, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
        os.rename(claim.slot, target, src_dir_fd=self._fd(INFLIGHT), dst_dir_fd=fd)
        os.fsync(self._fd(INFLIGHT))
        return target

    def prune_done(self, retention_s: float, now: float | None = None) -> int:
        """Delete done/ files older than the retention time; returns how many. Only
        entries of the done/ directory held open are touched, never what they point to."""
        now = time.time() if now is None else now
        removed = 0
        fd = self._fd(DONE)
        self.check()
        for _, name in self._entries(DONE):
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(name, dir_fd=fd)
                if not stat.S_ISDIR(st.st_mode) and now - st.st_mtime >= retention_s:
                    os.unlink(name, dir_fd=fd)
                    removed += 1
        return removed


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
