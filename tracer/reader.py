"""Read a root directory (a live ``/``, a captured tree, or a capture file's members) into a
:class:`Snapshot`.

One traversal, :func:`read_tree`, walks every path memledger knows through a small
:class:`Tree` interface. :class:`FsTree` is the only code in :mod:`memledger.tracer` that
touches the filesystem; :class:`MemTree` serves the members of a capture file from
memory; :class:`RecordingTree` keeps a copy of everything read so that ``memledger
capture`` writes exactly what ``analyze`` reads. Paths are relative to an injected root,
the way prometheus_client's ``ProcessCollector(proc=…)`` does it, so ``/`` is one more
root and tests run on fixture trees.

A missing file lowers the fidelity of the result; a file that exists but cannot be read
(a root-only runtime-map file read by a normal user) is recorded in
:attr:`Snapshot.unreadable`. Neither is an error.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from memledger.tracer.caps import SYSFS_ATTR_MAX
from memledger.tracer.sysfs import DMI_FIELDS, HARDWARE_FIELDS

__all__ = (
    "DMI_MAX_CHARS",
    "KMSG_PATH",
    "LOG_FILE",
    "MAX_FILE_BYTES",
    "FsTree",
    "MemTree",
    "RecordingTree",
    "Snapshot",
    "Tree",
    "decode_text",
    "read_kmsg",
    "read_root",
    "read_tree",
)

DMI_MAX_CHARS = SYSFS_ATTR_MAX
LOG_FILE = "dmesg.txt"
KMSG_PATH = "dev/kmsg"
# Each file is read up to this size; a larger one is cut and flagged. The largest file a
# kernel writes here is its log, and the log's ring buffer is at most 32 MiB
# (CONFIG_LOG_BUF_SHIFT ranges to 25); /proc and /sys files are far smaller.
MAX_FILE_BYTES = 32 << 20
_CHUNK = 1 << 20

_TEXT_FILES = {
    "proc_cmdline": "proc/cmdline",
    "proc_iomem": "proc/iomem",
    "proc_meminfo": "proc/meminfo",
    "proc_zoneinfo": "proc/zoneinfo",
    "proc_uptime": "proc/uptime",
    "osrelease": "proc/sys/kernel/osrelease",
    "boot_id": "proc/sys/kernel/random/boot_id",
    "machine_id": "etc/machine-id",
    "hostname": "proc/sys/kernel/hostname",
    "memblock_memory": "sys/kernel/debug/memblock/memory",
    "memblock_reserved": "sys/kernel/debug/memblock/reserved",
}
_TRACE_DIRS = ("sys/kernel/tracing", "sys/kernel/debug/tracing")
BOOT_PARAMS = "sys/kernel/boot_params/data"  # binary struct boot_params (tracer/bootparams.py)
_RUNTIME_MAP_FILES = ("type", "phys_addr", "num_pages", "attribute", "virt_addr")


@dataclass(slots=True)
class Snapshot:
    """Raw text of everything memledger reads from one root. No parsing here."""

    root: str
    kernel_log: str | None = None
    kernel_log_path: str | None = None
    texts: dict[str, str] = field(default_factory=dict)
    boot_params: bytes | None = None
    firmware_memmap: list[tuple[int, dict[str, str]]] | None = None
    efi_runtime_map: list[tuple[int, dict[str, str]]] | None = None
    efi_sysfs: bool | None = None
    traces: dict[str, str] = field(default_factory=dict)
    dmi: dict[str, str] | None = None
    # DMI product UUID and serial (HARDWARE_FIELDS), when readable: which machine this is.
    hardware: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)

    def text(self, key: str) -> str | None:
        return self.texts.get(key)


class Tree(Protocol):
    """Where :func:`read_tree` gets its files. Relative paths, ``/``-separated."""

    @property
    def unreadable(self) -> dict[str, str]:
        """Paths that exist but could not be read, with the reason."""
        ...

    @property
    def truncated(self) -> list[str]:
        """Paths cut at MAX_FILE_BYTES."""
        ...

    def read(self, rel: str) -> bytes | None:
        """Content (at most MAX_FILE_BYTES), or None when absent or unreadable (recorded)."""
        ...

    def listdir(self, rel: str) -> list[str] | None:
        """Sorted names in a directory, or None when it is not there."""
        ...

    def kernel_log(self) -> bytes | None:
        """The live kernel log (``dev/kmsg``), for trees that have one."""
        ...


def _read_capped(path: Path) -> bytes:
    """Read up to MAX_FILE_BYTES + 1 bytes in modest chunks.

    One large read() is wrong for procfs and sysfs: /proc/sys handlers allocate a buffer of
    the requested size and fail with ENOMEM for a count of hundreds of MiB.
    """
    chunks: list[bytes] = []
    total = 0
    with open(path, "rb", buffering=0) as fh:
        while total <= MAX_FILE_BYTES:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    return b"".join(chunks)


def read_kmsg(path: str | os.PathLike[str]) -> bytes:
    """Every record currently in the /dev/kmsg ring buffer, as kmsg text.

    Records that the ring buffer overwrote while reading (EPIPE) are skipped; the
    sequence numbers show the gap.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                rec = os.read(fd, 16384)
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue
            if not rec:
                break
            chunks.append(rec if rec.endswith(b"\n") else rec + b"\n")
    finally:
        os.close(fd)
    return b"".join(chunks)


class FsTree:
    """A directory on disk: ``/`` on a live host, or an unpacked capture."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.unreadable: dict[str, str] = {}
        self.truncated: list[str] = []

    def read(self, rel: str) -> bytes | None:
        try:
            data = _read_capped(self.root / rel)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            self.unreadable[rel] = "is a directory"
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ENOENT):
                return None
            self.unreadable[rel] = os.strerror(exc.errno or 0) or type(exc).__name__
            return None
        if len(data) > MAX_FILE_BYTES:
            self.truncated.append(rel)
            return data[:MAX_FILE_BYTES]
        return data

    def listdir(self, rel: str) -> list[str] | None:
        try:
            return sorted(os.listdir(self.root / rel))
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                return None
            self.unreadable[rel] = os.strerror(exc.errno or 0)
            return None

    def kernel_log(self) -> bytes | None:
        path = self.root / KMSG_PATH
        try:
            if not stat.S_ISCHR(path.stat().st_mode):
                return None
        except OSError:
            return None
        try:
            return read_kmsg(path)
        except OSError as exc:
            self.unreadable[KMSG_PATH] = os.strerror(exc.errno or 0)
            return None


class MemTree:
    """Files held in memory, such as the members of a capture file.

    ``files`` maps relative paths to contents; a directory exists when it is listed in
    ``dirs`` or holds a file.
    """

    def __init__(self, files: dict[str, bytes], dirs: set[str] | None = None,
                 unreadable: dict[str, str] | None = None,
                 truncated: list[str] | None = None) -> None:
        self.files = files
        self.unreadable = dict(unreadable or {})
        self.truncated = list(truncated or [])
        self._children: dict[str, set[str]] = {}
        for d in dirs or ():
            self._add_dir(d)
        for rel in files:
            parent, _, name = rel.rpartition("/")
            self._add_dir(parent)
            self._children[parent].add(name)

    def _add_dir(self, rel: str) -> None:
        """Add ``rel`` and its missing ancestors, without recursion (a path may be deep)."""
        child: str | None = None
        while True:
            known = rel in self._children
            names = self._children.setdefault(rel, set())
            if child is not None:
                names.add(child)
            if known or not rel:
                return
            rel, _, child = rel.rpartition("/")

    def read(self, rel: str) -> bytes | None:
        return self.files.get(rel)

    def listdir(self, rel: str) -> list[str] | None:
        names = self._children.get(rel)
        return sorted(names) if names is not None else None

    def kernel_log(self) -> bytes | None:
        return None


class RecordingTree:
    """Wraps a tree and keeps what was read: the contents of a capture file.

    A log read from ``dev/kmsg`` is kept as ``dmesg.txt``, where a captured tree holds it.
    """

    def __init__(self, inner: Tree) -> None:
        self.inner = inner
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = set()
        self.log_origin: str | None = None

    @property
    def unreadable(self) -> dict[str, str]:
        return self.inner.unreadable

    @property
    def truncated(self) -> list[str]:
        return self.inner.truncated

    def read(self, rel: str) -> bytes | None:
        data = self.inner.read(rel)
        if data is not None:
            self.files[rel] = data
            if rel == LOG_FILE:
                self.log_origin = LOG_FILE
        return data

    def listdir(self, rel: str) -> list[str] | None:
        names = self.inner.listdir(rel)
        if names is not None:
            self.dirs.add(rel)
        return names

    def kernel_log(self) -> bytes | None:
        data = self.inner.kernel_log()
        if data is not None:
            self.files[LOG_FILE] = data
            self.log_origin = KMSG_PATH
        return data


def _text(data: bytes | None) -> str | None:
    """UTF-8 text with what cannot be decoded, or stored (NUL), as U+FFFD."""
    return decode_text(data) if data is not None else None


def decode_text(data: bytes) -> str:
    """The bytes as UTF-8, undecodable bytes replaced by U+FFFD and NUL bytes dropped:
    kernel logs are data, never refused for a stray byte. PostgreSQL text cannot hold NUL,
    and a syslog file written at a crash is padded with NULs that run into the next
    boot's first line."""
    return data.decode("utf-8", errors="replace").replace("\x00", "")


def _numbered_dirs(tree: Tree, rel: str,
                   files: tuple[str, ...]) -> list[tuple[int, dict[str, str]]] | None:
    names = tree.listdir(rel)
    if names is None:
        return None
    out: list[tuple[int, dict[str, str]]] = []
    for name in names:
        if not name.isdigit():
            continue
        values = {f: text for f in files
                  if (text := _text(tree.read(f"{rel}/{name}/{f}"))) is not None}
        if values:
            out.append((int(name), values))
    out.sort()
    return out


def read_tree(tree: Tree, root: str) -> Snapshot:
    """Read every source memledger knows from ``tree``; ``root`` names it in messages.

    The kernel log is ``dmesg.txt`` in a captured tree and ``dev/kmsg`` on a live one.
    """
    snap = Snapshot(root=root)
    log = tree.read(LOG_FILE)
    if log is not None:
        snap.kernel_log, snap.kernel_log_path = _text(log), LOG_FILE
    elif (kmsg := tree.kernel_log()) is not None:
        snap.kernel_log, snap.kernel_log_path = _text(kmsg), KMSG_PATH

    for key, rel in _TEXT_FILES.items():
        text = _text(tree.read(rel))
        if text is not None:
            snap.texts[key] = text

    snap.firmware_memmap = _numbered_dirs(tree, "sys/firmware/memmap", ("start", "end", "type"))
    snap.efi_runtime_map = _numbered_dirs(tree, "sys/firmware/efi/runtime-map", _RUNTIME_MAP_FILES)
    if tree.listdir("sys/firmware/efi") is not None:
        snap.efi_sysfs = True
    elif tree.listdir("sys/firmware") is not None:
        snap.efi_sysfs = False

    for tdir in _TRACE_DIRS:
        text = _text(tree.read(f"{tdir}/trace"))
        if text is not None:
            snap.traces[f"{tdir}/trace"] = text
        for inst in tree.listdir(f"{tdir}/instances") or []:
            rel = f"{tdir}/instances/{inst}/trace"
            text = _text(tree.read(rel))
            if text is not None:
                snap.traces[rel] = text
        if any(k.startswith(tdir) for k in snap.traces):
            break  # the debugfs path is the same tracefs mounted twice

    snap.boot_params = tree.read(BOOT_PARAMS)

    # A sysfs attribute holds at most PAGE_SIZE (4096) bytes and one line; more is not
    # something the kernel wrote.
    dmi = {f: (text.strip().splitlines() or [""])[0][:DMI_MAX_CHARS] for f in DMI_FIELDS
           if (text := _text(tree.read(f"sys/class/dmi/id/{f}"))) is not None}
    snap.dmi = dmi or None
    for f in HARDWARE_FIELDS:  # kept in the capture, read by the store only (a host's key)
        rel = f"sys/class/dmi/id/{f}"
        if (text := _text(tree.read(rel))) is not None:
            snap.hardware[f] = (text.strip().splitlines() or [""])[0][:DMI_MAX_CHARS]
        # Root-only files: a capture taken as another user lacks them, and that is no gap
        # in the boot's evidence.
        tree.unreadable.pop(rel, None)
    snap.unreadable = dict(tree.unreadable)
    snap.truncated = list(tree.truncated)
    return snap


def read_root(root: str | os.PathLike[str]) -> Snapshot:
    """Read the directory tree at ``root`` (``/`` for this host)."""
    return read_tree(FsTree(root), str(Path(root)))
