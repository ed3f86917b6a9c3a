"""Turn a :class:`~memledger.tracer.reader.Snapshot` into parsed evidence, one per boot.

Pure: no file access. A kernel log that holds several boots gives one :class:`Evidence`
each; the /proc and /sys data of the snapshot describe the running (last) boot, so they
are attached to the last one only. A source that fails to parse is dropped, with the
reason kept in :attr:`Evidence.problems`, and the rest of the boot is still used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from memledger.tracer import bootparams, efimap, memblock, procfs, sysfs
from memledger.tracer import intervals as iv
from memledger.tracer.bootlog import KernelLog, parse_boot
from memledger.tracer.ftrace import TraceEvent, TraceLog, parse_trace
from memledger.tracer.logformat import BootLog, split_boots
from memledger.tracer.reader import Snapshot

__all__ = ("Evidence", "NotAKernelLog", "build_evidence", "is_trace_text")

T = TypeVar("T")


class NotAKernelLog(ValueError):
    """The text holds no kernel messages memledger recognises."""

    def __init__(self, path: str, lineno: int, what: str) -> None:
        super().__init__(f"{path}:{lineno}: {what}")
        self.path, self.lineno, self.what = path, lineno, what


@dataclass(slots=True)
class Evidence:
    """Everything known about one boot, parsed; None means the source was not there."""

    source: str
    boot_index: int = 0
    boot_count: int = 1
    host_data: bool = False
    log: KernelLog | None = None
    log_path: str | None = None
    trace: TraceLog | None = None
    trace_paths: list[str] = field(default_factory=list)
    proc_cmdline: str | None = None
    osrelease: str | None = None
    boot_id: str | None = None
    machine_id: str | None = None
    meminfo: dict[str, int] | None = None
    uptime_s: float | None = None  # /proc/uptime when read: how far into the boot
    zones: list[procfs.Zone] | None = None
    iomem: list[procfs.IomemEntry] | None = None
    firmware_memmap: list[sysfs.FirmwareMapEntry] | None = None
    runtime_map: list[efimap.RuntimeMapEntry] | None = None
    memblock_memory: list[memblock.MemblockRegion] | None = None
    memblock_reserved: list[memblock.MemblockRegion] | None = None
    dmi: dict[str, str] | None = None
    efi_sysfs: bool | None = None
    loader: bootparams.Loader | None = None
    unreadable: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def firmware_ram(self) -> iv.Span | None:
        """E820 RAM as the firmware reported it: the log's BIOS-e820 table, else
        /sys/firmware/memmap; None when neither is there."""
        if self.log is not None and self.log.e820:
            return iv.spans((e.start, e.end) for e in self.log.e820 if e.type == "ram")
        if self.firmware_memmap:
            return iv.spans((e.start, e.end) for e in self.firmware_memmap if e.type == "ram")
        return None

    @property
    def iomem_hidden(self) -> bool:
        """/proc/iomem read without privilege shows every address as zero."""
        return bool(self.iomem) and all(e.start == 0 and e.end == 1 for e in self.iomem or [])


def is_trace_text(text: str) -> bool:
    """True for tracefs ``trace`` output (it starts with ``# tracer:``)."""
    return text[:4096].lstrip().startswith("# tracer:")


def _refusal(boots: list[BootLog]) -> str:
    """Why a log gave no boot: which format its lines were read as, and what was missing."""
    if not boots:
        return ("no kernel messages found (expected dmesg, dmesg -T, /dev/kmsg, dmesg -r, "
                "syslog or journalctl -k output)")
    n = sum(len(b.msgs) for b in boots)
    return (f"no kernel messages found: {n} line{'s' if n != 1 else ''} read as "
            f"{boots[0].format}, none of them a boot or memory message (no 'Linux version', "
            "E820, EFI, 'Memory:' or 'Freeing' line)")


def _recognised(log: KernelLog) -> bool:
    return bool(log.release or log.e820 or log.memory or log.freeing or log.memblock
                or log.efi_version or log.efi_memmap or log.cmdline)


def _try(ev: Evidence, name: str, fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except ValueError as exc:
        ev.problems.append((name, str(exc)))
        return None


def _merge_traces(texts: dict[str, str], ev: Evidence) -> TraceLog | None:
    merged: TraceLog | None = None
    for path, text in sorted(texts.items()):
        log = parse_trace(text)
        for lineno, why in log.bad_lines[:5]:
            ev.problems.append((path, f"line {lineno}: {why}"))
        if merged is None:
            merged = log
            continue
        merged.events.extend(log.events)
        if log.entries is not None and log.written is not None:
            merged.entries = (merged.entries or 0) + log.entries
            merged.written = (merged.written or 0) + log.written
        ev.trace_paths.append(path)
    if merged is not None:
        merged.events.sort(key=_event_order)
    return merged


def _event_order(e: TraceEvent) -> tuple[float, int]:
    return (e.ts, e.lineno)


def _attach_host(ev: Evidence, snap: Snapshot) -> None:
    ev.host_data = True
    t = snap.text
    ev.proc_cmdline = (t("proc_cmdline") or "").strip() or None
    ev.osrelease = (t("osrelease") or "").strip() or None
    ev.boot_id = (t("boot_id") or "").strip() or None
    ev.machine_id = (t("machine_id") or "").strip() or None
    if (text := t("proc_meminfo")) is not None:
        ev.meminfo = _try(ev, "proc/meminfo", lambda: procfs.parse_meminfo(text))
    if (utext := t("proc_uptime")) is not None:
        ev.uptime_s = _try(ev, "proc/uptime", lambda: procfs.parse_uptime(utext))
    if (ztext := t("proc_zoneinfo")) is not None:
        ev.zones = _try(ev, "proc/zoneinfo", lambda: procfs.parse_zoneinfo(ztext))
    if (itext := t("proc_iomem")) is not None:
        ev.iomem = _try(ev, "proc/iomem", lambda: procfs.parse_iomem(itext))
    if (mtext := t("memblock_memory")) is not None:
        ev.memblock_memory = _try(ev, "memblock/memory", lambda: memblock.parse_debugfs(mtext))
    if (rtext := t("memblock_reserved")) is not None:
        ev.memblock_reserved = _try(ev, "memblock/reserved",
                                    lambda: memblock.parse_debugfs(rtext))
    if snap.firmware_memmap is not None:
        ev.firmware_memmap = _try(ev, "sys/firmware/memmap", lambda: [
            sysfs.parse_firmware_memmap_entry(i, f.get("start", ""), f.get("end", ""),
                                              f.get("type", ""))
            for i, f in snap.firmware_memmap or []])
    if snap.efi_runtime_map is not None:
        ev.runtime_map = _try(ev, "sys/firmware/efi/runtime-map", lambda: [
            efimap.parse_runtime_map_entry(i, f) for i, f in snap.efi_runtime_map or []])
    ev.dmi = snap.dmi
    ev.efi_sysfs = snap.efi_sysfs
    if snap.boot_params is not None:
        ev.loader = bootparams.parse_loader(snap.boot_params)
    ev.unreadable = dict(snap.unreadable)
    if snap.traces:
        ev.trace = _merge_traces(snap.traces, ev)


def build_evidence(snap: Snapshot, *, host_data: bool = True) -> list[Evidence]:
    """One :class:`Evidence` per boot found in the snapshot.

    ``host_data`` says whether the snapshot's /proc and /sys files describe the last boot
    of its log (true for a root directory, false for a bare log or trace file).

    Raises :class:`NotAKernelLog` when there is a kernel log but nothing in it is a
    kernel message.
    """
    source = snap.root
    logs: list[KernelLog] = []
    if snap.kernel_log is not None:
        path = f"{source}/{snap.kernel_log_path}" if snap.kernel_log_path else source
        boots = split_boots(snap.kernel_log)
        parsed = [parse_boot(b) for b in boots]
        # Pieces with no boot or memory message (the runtime tail of an earlier boot in a
        # syslog) are left out; a log in a kernel format that holds nothing else is still
        # a log, of a boot it does not show. Only text with no kernel prefix is refused.
        logs = [k for k in parsed if _recognised(k)]
        if not logs and boots and boots[0].format != "plain":
            logs = parsed
        if not logs:
            raise NotAKernelLog(path, 1, _refusal(boots))
    out: list[Evidence] = []
    for i, log in enumerate(logs):
        out.append(Evidence(source=source, boot_index=i, boot_count=len(logs), log=log,
                            log_path=snap.kernel_log_path))
    if not out:
        out.append(Evidence(source=source))
    if host_data:
        _attach_host(out[-1], snap)
    elif snap.traces:
        out[-1].trace = _merge_traces(snap.traces, out[-1])
    for ev in out:
        if ev.log is not None:
            for lineno, why in ev.log.bad_lines[:20]:
                ev.problems.append((f"{ev.log_path or source}", f"line {lineno}: {why}"))
    return out
