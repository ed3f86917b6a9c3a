"""What one boot's kernel log says about memory.

:func:`parse_boot` reads the messages of one :class:`~memledger.tracer.logformat.BootLog`
and keeps the lines that matter to the ledger, each with its position so that the ledger
can reason about order (for example, which ``Freeing`` lines came after ``Memory:``).
Each message costs one ``str.startswith`` against the tuple of prefixes the ledger reads
before anything else runs; of a typical boot's messages about one in five passes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from memledger.tracer import e820, efimap, memblock
from memledger.tracer.e820 import E820Change, E820Entry
from memledger.tracer.logformat import BootLog, is_banner

__all__ = (
    "Crashkernel",
    "FreeingLine",
    "KernelLog",
    "MemoryLine",
    "Positioned",
    "parse_boot",
)


@dataclass(slots=True)
class Positioned:
    """Where a record came from: index in the boot's messages, 1-based source line, and
    the message's time stamp in seconds when the log format has one. (Not frozen, like
    :class:`~memledger.tracer.memblock.MemblockEvent`, for speed; nothing mutates it.)"""

    index: int
    lineno: int
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class MemoryLine:
    """``Memory: %luK/%luK available (…)`` from mem_init_print_info()."""

    at: Positioned
    available_kib: int
    total_kib: int
    fields_kib: dict[str, int]

    @property
    def reserved_kib(self) -> int | None:
        return self.fields_kib.get("reserved")


@dataclass(frozen=True, slots=True)
class FreeingLine:
    """``[prefix: ]Freeing %s memory: %ldK`` (free_reserved_area and the EFI summary)."""

    at: Positioned
    name: str
    kib: int
    prefix: str | None


@dataclass(frozen=True, slots=True)
class Crashkernel:
    at: Positioned
    low: bool
    start: int | None
    size: int


@dataclass(slots=True)
class KernelLog:
    format: str
    complete: bool
    message_count: int
    first_lineno: int
    last_lineno: int
    boot_id: str | None = None
    release: str | None = None
    cmdline: str | None = None
    efi_version: str | None = None
    efi_vendor: str | None = None
    efi_tables: dict[str, int] = field(default_factory=dict)
    e820: list[E820Entry] = field(default_factory=list)
    e820_changes: list[tuple[Positioned, E820Change]] = field(default_factory=list)
    efi_memmap: list[efimap.EfiMemDesc] = field(default_factory=list)
    efi_memmap_prints: int = 0
    memblock: list[tuple[Positioned, memblock.MemblockEvent]] = field(default_factory=list)
    memblock_allocs: int = 0
    memory: MemoryLine | None = None
    freeing: list[FreeingLine] = field(default_factory=list)
    crashkernel: list[Crashkernel] = field(default_factory=list)
    dmi: str | None = None
    ramdisk: tuple[int, int] | None = None
    efi_debug_segments_warning: bool = False
    no_trampoline_memory: bool = False
    lazy_deferred_pages: int | None = None  # "deferred_init=lazy: N pages left to …"
    init_done: Positioned | None = None  # the first line kernel_init() prints after initcalls
    efi_invalid_entries: int = 0  # "(invalid)" rows after "Invalid EFI memory map entries:"
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def efi(self) -> bool:
        return self.efi_version is not None


_VERSION = re.compile(r"(?:^| )Linux version (?P<rel>\S+)")
# efi_systab_report_header(); 2.6 kernels printed the banner without "efi: ".
_EFI = re.compile(r"^(?:efi: )?EFI v(?P<ver>[\d.]+) by (?P<vendor>.+?)\s*$")
_EFI_TABLE = re.compile(r"(?P<name>[A-Za-z][\w .-]*?)=(?P<addr>0x[0-9a-fA-F]+)")
# mem_init_print_info() prints "K" since 7ee3d4e8cd56 ("mm: introduce helper function
# mem_init_print_info() to simplify mem_init()", v3.11); x86's own mem_init() before it
# (v3.10, and RHEL 7) printed "k" and an "absent" field: "Memory: 4965544k/9437184k available (6886k
# kernel code, 1049032k absent, 409120k reserved, 4535k data, 1764k init)". Its "reserved"
# is the same figure (present pages not given to the buddy allocator).
_MEMORY = re.compile(r"^Memory: (?P<avail>\d+)[Kk]/(?P<total>\d+)[Kk] available \((?P<rest>.*)\)\s*$")
_MEMORY_FIELD = re.compile(r"(?P<kib>\d+)[Kk] (?P<name>[\w -]+?)\s*(?:,|$)")
# free_reserved_area(): "Freeing %s memory: %ldK", with " (%p - %p)" after it until
# adb1fe9ae2ee ("mm/page_alloc: Remove kernel address exposure in free_reserved_area()",
# v4.10); the EFI summary has an "efi: " prefix.
_FREEING = re.compile(r"^(?:(?P<prefix>[\w.-]+): )?Freeing (?P<name>.+?) memory: (?P<kib>\d+)[Kk]"
                      r"(?: \([0-9a-fA-Fx]+ - [0-9a-fA-Fx]+\))?\s*$")
# x86's free_init_pages() before "mm/x86: use free_reserved_area() to simplify code"
# (v3.11): "Freeing %s: %luk freed", %s being "unused kernel memory", "initrd memory" or
# "SMP alternatives".
_FREED = re.compile(r"^Freeing (?P<name>.+?)(?: memory)?: (?P<kib>\d+)[Kk] freed\s*$")
# What a kernel prints once every initcall has run, in kernel_init(): free_initmem()'s
# Freeing line ("unused kernel" on x86 and arm64, "init" on 32-bit arm; with
# debug_pagealloc, x86 prints "debug: unmapping init [mem …]" instead), mark_rodata_ro()
# ("Write protecting the kernel read-only data: %luk" on x86_64), and since v4.19
# run_init_process() ("Run %s as init process"; before it, nothing).
_INIT_DONE = ("Freeing unused kernel", "Freeing init memory", "debug: unmapping init ",
              "Write protecting the kernel read-only data", "Run ")
_RAMDISK = re.compile(r"^RAMDISK: \[mem (?P<s>0x[0-9a-fA-F]+)-(?P<e>0x[0-9a-fA-F]+)\]")
# Generic kernel/crash_reserve.c (x86 since ~v6.7) and the v6.1 x86 strings (setup.c).
_CRASH_GENERIC = re.compile(
    r"^crashkernel (?P<low>low memory )?reserved: (?P<s>0x[0-9a-fA-F]+) - (?P<e>0x[0-9a-fA-F]+)"
    r" \((?P<mb>\d+) MB\)"
)
_CRASH_61 = re.compile(
    r"^Reserving (?P<mb>\d+)MB of (?P<low>low )?memory at (?P<at>\d+)MB for crashkernel"
)


def _parse_memory(at: Positioned, m: re.Match[str]) -> MemoryLine:
    fields = {f.group("name"): int(f.group("kib")) for f in _MEMORY_FIELD.finditer(m.group("rest"))}
    return MemoryLine(at, int(m.group("avail")), int(m.group("total")), fields)


# Every message _dispatch acts on starts with one of these.
_MEMBLOCK = ("memblock_", "_memblock_", "__memblock_")  # memblock_dbg(): "%s: [%pa-%pa] %pS"
_WANTED = (*_MEMBLOCK, "BIOS-e820: ", "efi: ", "EFI v", "e820: ", "Freeing ", "Memory: ",
           "Linux version ", "Booting Linux on physical CPU ", "Command line: ",
           "Kernel command line: ", "DMI: ", "RAMDISK: ",
           "Reserving ", "crashkernel ", "No sub-1M memory is available for the trampoline",
           "deferred_init=lazy: ", *_INIT_DONE)
_LAZY = re.compile(r"^deferred_init=lazy: (?P<pages>\d+) pages left")


def _dispatch(log: KernelLog, at: Positioned, msg: str, state: dict[str, bool]) -> None:
    c = msg[:1]
    if c == "B" and msg.startswith("BIOS-e820: "):
        # e820__memory_setup() prints the firmware table once per boot.
        entry = e820.parse_entry(msg)
        if entry is not None:
            log.e820.append(entry)
    elif c == "e":
        if msg.startswith("efi: "):
            _efi_line(log, at, msg, state)
        elif msg.startswith("e820: "):
            change = e820.parse_change(msg)
            if change is not None:
                log.e820_changes.append((at, change))
    elif c == "E" and msg.startswith("EFI v"):
        _efi_line(log, at, "efi: " + msg, state)
    elif c == "F" and msg.startswith("Freeing "):
        _freeing(log, at, msg)
        if msg.startswith(_INIT_DONE):
            _init_done(log, at, msg)
    elif c in "dWR" and msg.startswith(_INIT_DONE):
        _init_done(log, at, msg)
    elif c == "M" and msg.startswith("Memory: "):
        m = _MEMORY.match(msg)
        if m and log.memory is None:
            log.memory = _parse_memory(at, m)
    elif (c == "L" and msg.startswith("Linux version ")) or (c == "B" and is_banner(msg)):
        v = _VERSION.search(msg)
        if v and log.release is None:
            log.release = v.group("rel")
    elif c in "CK":
        for prefix in ("Command line: ", "Kernel command line: "):
            if msg.startswith(prefix) and log.cmdline is None:
                log.cmdline = msg[len(prefix):]
    elif c == "D" and msg.startswith("DMI: "):
        if log.dmi is None:
            log.dmi = msg[5:].strip()
    elif c == "R":
        if msg.startswith("RAMDISK: "):
            r = _RAMDISK.match(msg)
            if r:
                log.ramdisk = (int(r.group("s"), 16), int(r.group("e"), 16) + 1)
        elif msg.startswith("Reserving ") and "crashkernel" in msg:
            k = _CRASH_61.match(msg)
            if k:
                log.crashkernel.append(Crashkernel(at, bool(k.group("low")),
                                                   int(k.group("at")) << 20,
                                                   int(k.group("mb")) << 20))
    elif c == "c" and msg.startswith("crashkernel "):
        g = _CRASH_GENERIC.match(msg)
        if g:
            start = int(g.group("s"), 16)
            # kernel/crash_reserve.c prints "base - base + size": the end is exclusive.
            log.crashkernel.append(Crashkernel(at, bool(g.group("low")), start,
                                               int(g.group("e"), 16) - start))
    elif c == "N" and msg.startswith("No sub-1M memory is available for the trampoline"):
        log.no_trampoline_memory = True
    elif c == "d" and (z := _LAZY.match(msg)) is not None:
        log.lazy_deferred_pages = int(z.group("pages"))


def _efi_line(log: KernelLog, at: Positioned, msg: str, state: dict[str, bool]) -> None:
    if msg.startswith("efi: mem"):
        if msg.endswith("(invalid)"):
            # efi_clean_memmap() ("efi/x86: Prune invalid memory map entries and fix boot
            # regression", v4.10) prints these rows and removes them from the map.
            log.efi_invalid_entries += 1
            return
        desc = efimap.parse_memmap_line(msg)
        if desc is None:
            return
        if desc.index == 0:
            log.efi_memmap_prints += 1
        # Only the first dump (efi_init) is the firmware's map; the second one, after
        # "EFI runtime memory map:", has already been split and tagged by the kernel.
        if log.efi_memmap_prints <= 1:
            log.efi_memmap.append(desc)
    elif msg.startswith("efi: EFI v"):
        m = _EFI.match(msg)
        if m and log.efi_version is None:
            log.efi_version, log.efi_vendor = m.group("ver"), m.group("vendor")
            state["efi_tables_next"] = True
        return
    elif msg.startswith("efi: Freeing "):
        _freeing(log, at, msg)
    elif msg.startswith(("efi: More then", "efi: More than")):
        log.efi_debug_segments_warning = True
    elif state.get("efi_tables_next") and "=0x" in msg:
        # efi_systab_report_header() is followed by the config-table line
        # ("efi: ACPI=0x… SMBIOS=0x… MEMATTR=0x… …").
        for t in _EFI_TABLE.finditer(msg[5:]):
            log.efi_tables[t.group("name").strip()] = int(t.group("addr"), 16)
    state.pop("efi_tables_next", None)


def _freeing(log: KernelLog, at: Positioned, msg: str) -> None:
    m = _FREEING.match(msg) or _FREED.match(msg)
    if m:
        prefix = m.groupdict().get("prefix")
        log.freeing.append(FreeingLine(at, m.group("name"), int(m.group("kib")), prefix))


def _init_done(log: KernelLog, at: Positioned, msg: str) -> None:
    if log.init_done is None and (not msg.startswith("Run ") or msg.endswith(" as init process")):
        log.init_done = at


def parse_boot(boot: BootLog) -> KernelLog:
    """Extract the memory-relevant records of one boot."""
    msgs, linenos, tss = boot.msgs, boot.linenos, boot.ts
    log = KernelLog(
        format=boot.format,
        complete=boot.complete,
        message_count=len(msgs),
        first_lineno=linenos[0] if msgs else 0,
        last_lineno=linenos[-1] if msgs else 0,
        boot_id=boot.boot_id,
    )
    state: dict[str, bool] = {}
    ranges: list[int] = []  # memblock range lines, parsed together below
    for index in [i for i, msg in enumerate(msgs) if msg.startswith(_WANTED)]:
        msg = msgs[index]
        if msg.startswith(_MEMBLOCK):
            # Most of a memblock=debug boot: allocations are counted, ranges kept.
            if memblock.ALLOC_MARK in msg:
                log.memblock_allocs += 1
            else:
                ranges.append(index)
            continue
        try:
            _dispatch(log, Positioned(index, linenos[index], tss[index]), msg, state)
        except ValueError as exc:
            log.bad_lines.append((linenos[index], str(exc)))
    if ranges:
        events, bad = memblock.parse_ranges([msgs[i] for i in ranges])
        at = [ranges[pos] for pos, _ in events]
        log.memblock = [(Positioned(i, linenos[i], tss[i]), ev)
                        for i, (_, ev) in zip(at, events, strict=True)]
        log.bad_lines.extend((linenos[ranges[pos]], why) for pos, why in bad)
        log.bad_lines.sort()
    return log
