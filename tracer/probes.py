"""Every probe memledger attaches, at boot and at runtime, and how runtime hits become
:class:`RuntimeEvent` records (pure). This is the one catalogue: the lab and
``memledger boot-setup`` put :data:`BOOT_TRACE_FUNCTIONS` and :data:`BOOT_PROBES` on the
kernel command line; ``memledger collect`` attaches :data:`PROBES`.

At boot (stock Debian kernels have no CONFIG_BOOT_CONFIG, so these are command-line
arguments): ``ftrace=function`` with ``ftrace_filter=`` :data:`BOOT_TRACE_FUNCTIONS` starts
in start_kernel, early enough to see efi_free_boot_services and every free_reserved_area
it calls (callers and times, no arguments); ``kprobe_event=`` :data:`BOOT_PROBES` become
live at fs_initcall (init_kprobe_trace), after the arch_initcall EFI free, and see the
initrd, initmem and rodata-gap frees with their arguments and return values. They record
``base=@page_offset_base`` so that the direct-map addresses free_reserved_area takes can
be turned into physical ones.

At runtime, both collector back ends attach the same probes: bcc (eBPF programs on kprobes) and the
tracefs fallback (kprobe events in a ``memledger`` trace instance). Each back end turns
what it sees into :class:`ProbeHit` records, and one :class:`Assembler` turns hits into
events, so the two cannot disagree about what an event means.

What is probed at runtime (x86-64 SysV arguments: %di, %si, %dx, %cx):

* ``free_reserved_area(start, end, poison, s)``: entry (direct-map range, the name the
  kernel prints in ``Freeing <s> memory``, and ``page_offset_base`` to make the range
  physical) and return (pages freed). Runtime callers: reserve_mem release (v6.14+,
  reserve_mem_release_by_name), late initrd, some drivers.
* ``crash_free_reserved_phys_range(begin, end)``: a crashkernel shrink through
  /sys/kernel/kexec_crash_size frees [begin, end) page by page (kernel/kexec_core.c in
  v6.1, ``void __weak``, so never inlined). Where a kernel has no such symbol, the
  ladder falls back to ``crash_shrink_memory(new_size)`` with ``crashk_res`` read at
  entry and the return value checked.
* ``online_pages(pfn, nr_pages, …)`` / ``offline_pages(start_pfn, nr_pages, …)``:
  memory hotplug, counted when they return 0.
* ``adjust_managed_page_count(page, count)``: every change of the zones' managed pages,
  summed per calling function (in the kernel, by the eBPF back end).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from memledger.tracer.ftrace import TraceEvent
from memledger.tracer.runtime import Kind, RuntimeEvent

__all__ = (
    "BOOT_PROBES",
    "BOOT_TRACE_FUNCTIONS",
    "GROUP",
    "PAGE_SIZE",
    "PROBES",
    "Assembler",
    "Probe",
    "ProbeHit",
    "choose_probes",
    "hit_from_trace",
)

GROUP = "memledger"
PAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Probe:
    event: str                       # the kprobe event name, in GROUP
    function: str                    # the kernel function probed
    is_return: bool
    fetchargs: tuple[str, ...] = ()  # tracefs fetch arguments, NAME=FETCHARG[:TYPE]
    alternative_to: str | None = None  # used only when this function is missing
    group: str = GROUP               # the event group (boot-time probes: "kprobes")

    @property
    def definition(self) -> str:
        """The line written to tracefs ``kprobe_events``."""
        kind = "r" if self.is_return else "p"
        return " ".join((f"{kind}:{self.group}/{self.event}", self.function, *self.fetchargs))

    @property
    def boot_arg(self) -> str:
        """This probe in ``kprobe_event=`` syntax: ``,`` where tracefs has spaces (the
        command line joins probes with ``;``)."""
        kind = "r" if self.is_return else "p"
        return ",".join((f"{kind}:{self.group}/{self.event}", self.function, *self.fetchargs))


# Functions the boot-time function tracer follows (ftrace_filter=).
BOOT_TRACE_FUNCTIONS = (
    "efi_free_boot_services", "efi_unmap_boot_services", "efi_enter_virtual_mode",
    "free_reserved_area", "memblock_free_late", "memblock_phys_free", "memblock_free",
    "memblock_discard", "free_init_pages", "free_initrd_mem", "free_initmem",
    "free_kernel_image_pages", "deferred_init_memmap", "page_alloc_init_late",
    "init_real_mode", "do_init_real_mode", "swiotlb_exit", "pci_iommu_init",
)

# The boot-time kprobes. Their event and field names are what tracer/kprobes.py reads
# back from the boot trace.
BOOT_PROBES: tuple[Probe, ...] = (
    Probe("efi_free_boot_services", "efi_free_boot_services", False, group="kprobes"),
    Probe("free_reserved_area", "free_reserved_area", False,
          ("start=%di:x64", "end=%si:x64", "poison=%dx:s32", "s=+0(%cx):string",
           "base=@page_offset_base:x64"), group="kprobes"),
    Probe("free_reserved_area_ret", "free_reserved_area", True, ("pages=$retval:u64",),
          group="kprobes"),
    Probe("memblock_free_late", "memblock_free_late", False, ("base=%di:x64", "size=%si:x64"),
          group="kprobes"),
    Probe("free_init_pages", "free_init_pages", False,
          ("what=+0(%di):string", "begin=%si:x64", "end=%dx:x64"), group="kprobes"),
    Probe("free_initrd_mem", "free_initrd_mem", False, ("start=%di:x64", "end=%si:x64"),
          group="kprobes"),
    Probe("free_initmem", "free_initmem", False, group="kprobes"),
    Probe("free_kernel_image_pages", "free_kernel_image_pages", False,
          ("what=+0(%di):string", "begin=%si:x64", "end=%dx:x64"), group="kprobes"),
)


PROBES: tuple[Probe, ...] = (
    Probe("fra", "free_reserved_area", False,
          ("start=%di:x64", "end=%si:x64", "s=+0(%cx):string", "base=@page_offset_base:x64")),
    Probe("fra_ret", "free_reserved_area", True, ("ret=$retval:s64",)),
    Probe("crash_free", "crash_free_reserved_phys_range", False, ("begin=%di:x64", "end=%si:x64")),
    # struct resource starts with resource_size_t start, end (inclusive).
    Probe("crash_shrink", "crash_shrink_memory", False,
          ("new_size=%di:u64", "start=@crashk_res:x64", "end=@crashk_res+8:x64"),
          alternative_to="crash_free_reserved_phys_range"),
    Probe("crash_shrink_ret", "crash_shrink_memory", True, ("ret=$retval:s32",),
          alternative_to="crash_free_reserved_phys_range"),
    Probe("online", "online_pages", False, ("pfn=%di:x64", "nr_pages=%si:u64")),
    Probe("online_ret", "online_pages", True, ("ret=$retval:s32",)),
    Probe("offline", "offline_pages", False, ("pfn=%di:x64", "nr_pages=%si:u64")),
    Probe("offline_ret", "offline_pages", True, ("ret=$retval:s32",)),
    Probe("amc", "adjust_managed_page_count", False, ("count=%si:s64", "caller=+0(%sp):symbol")),
)


def choose_probes(available: set[str] | frozenset[str]) -> tuple[list[Probe], list[str]]:
    """The probes whose functions the kernel has, and the functions that are missing.

    ``available`` holds the traceable function names (available_filter_functions or
    kallsyms). An ``alternative_to`` probe is used only when its primary is missing.
    """
    covered = {p.alternative_to for p in PROBES
               if p.alternative_to is not None and p.function in available}
    chosen: list[Probe] = []
    missing: list[str] = []
    for p in PROBES:
        if p.alternative_to is not None and p.alternative_to in available:
            continue  # the primary is there
        if p.function in available:
            chosen.append(p)
        elif p.function not in missing and p.function not in covered:
            missing.append(p.function)
    return chosen, missing


@dataclass(frozen=True, slots=True)
class ProbeHit:
    event: str                       # Probe.event
    pid: int
    ts: float                        # seconds since boot
    args: dict[str, int | str] = field(default_factory=dict)
    site: str | None = None          # for returns: the caller function, when known


def _function_of(symbol: str) -> str:
    """``crash_free_reserved_phys_range+0x2a/0x50`` -> the function name."""
    return symbol.split("+", 1)[0].strip()


def hit_from_trace(e: TraceEvent) -> ProbeHit | None:
    """A ProbeHit from a parsed trace_pipe line of one of our events; None otherwise."""
    name = e.name.split(":")[-1]
    if not any(p.event == name for p in PROBES):
        return None
    args: dict[str, int | str] = {}
    for key, value in e.args.items():
        number = e.int_arg(key)
        args[key] = number if number is not None and key not in ("s", "caller") else value
    ret = e.return_site
    return ProbeHit(name, e.pid, e.ts, args, ret[0] if ret is not None else None)


def _int(hit: ProbeHit, key: str) -> int | None:
    value = hit.args.get(key)
    return value if isinstance(value, int) else None


class Assembler:
    """Pairs entries with returns (per pid) and sums managed-page changes per caller."""

    def __init__(self) -> None:
        self.seq = 0
        self.pending: dict[tuple[str, int], ProbeHit] = {}
        self.managed: defaultdict[str, int] = defaultdict(int)
        self.managed_ts: float | None = None
        self.unpaired = 0

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def add_managed(self, caller: str, pages: int, ts: float | None) -> None:
        self.managed[caller] += pages
        if ts is not None:
            self.managed_ts = ts if self.managed_ts is None else max(self.managed_ts, ts)

    def feed(self, hit: ProbeHit) -> list[RuntimeEvent]:
        """Events completed by this hit (usually zero or one)."""
        if hit.event == "amc":
            count = _int(hit, "count")
            if count is not None:
                caller = hit.args.get("caller")
                self.add_managed(_function_of(caller) if isinstance(caller, str) else "?",
                                 count, hit.ts)
            return []
        if hit.event == "crash_free":
            begin, end = _int(hit, "begin"), _int(hit, "end")
            if begin is None or end is None or end < begin:
                return []
            # for (addr = begin; addr < end; addr += PAGE_SIZE) frees whole pages; the
            # caller passes crashk_res.end, which is inclusive.
            pages = -(-(end - begin) // PAGE_SIZE)
            return [RuntimeEvent(self._next(), hit.ts, "freed", "crash_free_reserved_phys_range",
                                 begin, begin + pages * PAGE_SIZE, pages * PAGE_SIZE,
                                 "crash_shrink_memory")]
        if not hit.event.endswith("_ret"):
            self.pending[(hit.event, hit.pid)] = hit
            return []
        entry = self.pending.pop((hit.event[:-4], hit.pid), None)
        ret = _int(hit, "ret")
        if entry is None or ret is None:
            self.unpaired += 1
            return []
        return self._complete(entry, hit, ret)

    def _complete(self, entry: ProbeHit, hit: ProbeHit, ret: int) -> list[RuntimeEvent]:
        ev = entry.event
        if ev == "fra":
            start, end, base = _int(entry, "start"), _int(entry, "end"), _int(entry, "base")
            name = entry.args.get("s")
            phys: tuple[int | None, int | None] = (None, None)
            if start is not None and end is not None and base is not None and start >= base:
                phys = (start - base, end - base)
            detail = name if isinstance(name, str) and name not in ("(fault)", "") else None
            return [RuntimeEvent(self._next(), hit.ts, "freed", "free_reserved_area", *phys,
                                 max(ret, 0) * PAGE_SIZE, hit.site, detail)]
        if ev == "crash_shrink":
            new, start, end = _int(entry, "new_size"), _int(entry, "start"), _int(entry, "end")
            if ret != 0 or new is None or start is None or end is None or end <= start:
                return []
            old = end - start + 1
            if new >= old:
                return []
            # crash_shrink_memory rounds start + new_size up to KEXEC_CRASH_MEM_ALIGN
            # (a page on x86) and frees from there to the old end.
            first = -(-(start + new) // PAGE_SIZE) * PAGE_SIZE
            pages = -(-(end - first) // PAGE_SIZE)
            return [RuntimeEvent(self._next(), hit.ts, "freed", "crash_shrink_memory", first,
                                 first + pages * PAGE_SIZE, pages * PAGE_SIZE, hit.site)]
        if ev in ("online", "offline"):
            pfn, nr = _int(entry, "pfn"), _int(entry, "nr_pages")
            if ret != 0 or pfn is None or nr is None:
                return []
            kind: Kind = "freed" if ev == "online" else "offlined"
            return [RuntimeEvent(self._next(), hit.ts, kind, f"{ev}_pages", pfn * PAGE_SIZE,
                                 (pfn + nr) * PAGE_SIZE, nr * PAGE_SIZE, hit.site)]
        return []

    def flush_managed(self) -> list[RuntimeEvent]:
        """One ``managed`` event per caller since the last flush (net pages, in bytes)."""
        out = [RuntimeEvent(self._next(), self.managed_ts, "managed", "adjust_managed_page_count",
                            bytes=pages * PAGE_SIZE, caller=caller)
               for caller, pages in sorted(self.managed.items()) if pages]
        self.managed.clear()
        self.managed_ts = None
        return out
