"""Read a root directory (a live ``/`` or a captured tree) into a :class:`Snapshot`.

This is the only module of :mod:`memledger.tracer` that touches the filesystem. Every
path is taken relative to an injected root, the way prometheus_client's
``ProcessCollector(proc=…)`` does, so that ``/`` is just one more root and tests run on
fixture trees. A missing file lowers the fidelity of the result; a file that exists but
cannot be read (for example a root-only runtime-map file read by a normal user) is
recorded in :attr:`Snapshot.unreadable`. Neither is an error.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from memledger.tracer.sysfs import DMI_FIELDS

__all__ = ("KMSG_PATH", "LOG_FILE", "Snapshot", "read_kmsg", "read_root")

LOG_FILE = "dmesg.txt"
KMSG_PATH = "dev/kmsg"
# Each text file is read up to this size; a larger one is cut and flagged.
MAX_FILE_BYTES = 256 << 20
_CHUNK = 1 << 20

_TEXT_FILES = {
    "proc_cmdline": "proc/cmdline",
    "proc_iomem": "proc/iomem",
    "proc_meminfo": "proc/meminfo",
    "proc_zoneinfo": "proc/zoneinfo",
    "osrelease": "proc/sys/kernel/osrelease",
    "boot_id": "proc/sys/kernel/random/boot_id",
    "machine_id": "etc/machine-id",
    "memblock_memory": "sys/kernel/debug/memblock/memory",
    "memblock_reserved": "sys/kernel/debug/memblock/reserved",
}
_TRACE_DIRS = ("sys/kernel/tracing", "sys/kernel/debug/tracing")
_RUNTIME_MAP_FILES = ("type", "phys_addr", "num_pages", "attribute", "virt_addr")


@dataclass(slots=True)
class Snapshot:
    """Raw text of everything memledger reads from one root. No parsing here."""

    root: str
    kernel_log: str | None = None
    kernel_log_path: str | None = None
    texts: dict[str, str] = field(default_factory=dict)
    firmware_memmap: list[tuple[int, dict[str, str]]] | None = None
    efi_runtime_map: list[tuple[int, dict[str, str]]] | None = None
    efi_sysfs: bool | None = None
    traces: dict[str, str] = field(default_factory=dict)
    dmi: dict[str, str] | None = None
    unreadable: dict[str, str] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)

    def text(self, key: str) -> str | None:
        return self.texts.get(key)


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


class _Reader:
    def __init__(self, root: Path, snap: Snapshot) -> None:
        self.root = root
        self.snap = snap

    def read(self, rel: str) -> str | None:
        """Text of ``root/rel``, or None when absent or unreadable (recorded)."""
        path = self.root / rel
        try:
            data = _read_capped(path)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            self.snap.unreadable[rel] = "is a directory"
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ENOENT):
                return None
            self.snap.unreadable[rel] = os.strerror(exc.errno or 0) or type(exc).__name__
            return None
        if len(data) > MAX_FILE_BYTES:
            data = data[:MAX_FILE_BYTES]
            self.snap.truncated.append(rel)
        return data.decode("utf-8", errors="replace")

    def listdir(self, rel: str) -> list[str] | None:
        try:
            return sorted(os.listdir(self.root / rel))
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                return None
            self.snap.unreadable[rel] = os.strerror(exc.errno or 0)
            return None

    def numbered_dirs(self, rel: str, files: tuple[str, ...]) -> list[tuple[int, dict[str, str]]] | None:
        names = self.listdir(rel)
        if names is None:
            return None
        out: list[tuple[int, dict[str, str]]] = []
        for name in names:
            if not name.isdigit():
                continue
            values = {f: text for f in files if (text := self.read(f"{rel}/{name}/{f}")) is not None}
            if values:
                out.append((int(name), values))
        out.sort()
        return out


def read_kmsg(path: str | os.PathLike[str]) -> str:
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
    return b"".join(chunks).decode("utf-8", errors="replace")


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        return False


def read_root(root: str | os.PathLike[str]) -> Snapshot:
    """Read every source memledger knows from the tree at ``root``.

    The kernel log is ``root/dmesg.txt`` in a captured tree and ``root/dev/kmsg`` on a
    live one.
    """
    base = Path(root)
    snap = Snapshot(root=str(base))
    r = _Reader(base, snap)

    log = r.read(LOG_FILE)
    if log is not None:
        snap.kernel_log, snap.kernel_log_path = log, LOG_FILE
    elif _is_char_device(base / KMSG_PATH):
        try:
            snap.kernel_log, snap.kernel_log_path = read_kmsg(base / KMSG_PATH), KMSG_PATH
        except OSError as exc:
            snap.unreadable[KMSG_PATH] = os.strerror(exc.errno or 0)

    for key, rel in _TEXT_FILES.items():
        text = r.read(rel)
        if text is not None:
            snap.texts[key] = text

    snap.firmware_memmap = r.numbered_dirs("sys/firmware/memmap", ("start", "end", "type"))
    snap.efi_runtime_map = r.numbered_dirs("sys/firmware/efi/runtime-map", _RUNTIME_MAP_FILES)
    efi_dir = r.listdir("sys/firmware/efi")
    if efi_dir is not None:
        snap.efi_sysfs = True
    elif r.listdir("sys/firmware") is not None:
        snap.efi_sysfs = False

    for tdir in _TRACE_DIRS:
        text = r.read(f"{tdir}/trace")
        if text is not None:
            snap.traces[f"{tdir}/trace"] = text
        for inst in r.listdir(f"{tdir}/instances") or []:
            rel = f"{tdir}/instances/{inst}/trace"
            text = r.read(rel)
            if text is not None:
                snap.traces[rel] = text
        if any(k.startswith(tdir) for k in snap.traces):
            break  # the debugfs path is the same tracefs mounted twice

    dmi = {f: text.strip() for f in DMI_FIELDS
           if (text := r.read(f"sys/class/dmi/id/{f}")) is not None}
    snap.dmi = dmi or None
    return snap
