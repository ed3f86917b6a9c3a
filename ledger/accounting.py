"""The kernel's own reserved-memory bookkeeping, and its residual.

``Memory: …K reserved`` (mem_init_print_info) is physpages - totalram - cma at the moment
it is printed. Every later ``Freeing … memory`` line is free_reserved_area() handing pages
to the buddy allocator, and what stays reserved is Σpresent - Σmanaged in /proc/zoneinfo.
So ``reserved(boot) = (Σpresent - Σmanaged) + Σ(Freeing lines after the Memory: line)``
and the residual should be 0. Only the lines after ``Memory:`` count: v6.1 prints it in
mm_init() before "SMP alternatives" is freed, while 6.12.117 prints it after deferred init,
when that line has already been counted (seen in the shared captures g, h and n). A
positive residual on a kernel without a4b0bf6a40f3 is what memblock_free_late() freed
silently; with memblock=debug those frees are visible (``memblock_free_late: […] caller``)
and are reported as ``silent_freed_bytes``, so that the residual can be explained. The
pages of those frees that were still deferred never reached a zone (the deferred-init
leak, MemTotal - Σmanaged): they stay in present - managed, so the residual is the
silent frees less the leak.

Lazy deferred struct-page init (``deferred_init=lazy``, a 6.18 host kernel's option that
prints ``deferred_init=lazy: N pages left to deferred_grow_zone()``) leaves pages
uninitialised after boot and hands them to the zones only when an allocation needs them.
Until then they count in present (and in MemTotal, which memblock_free_all() adjusts
ahead of time) but not in managed, and no counter says how many are left. So the residual
is negative by the pages still waiting, a figure that drifts as they are taken: up to the
N pages the log printed it is taken as those pages (``lazy_uninitialised_bytes``, an
inference), and only what lies beyond N is unexplained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memledger.tracer.evidence import Evidence
from memledger.tracer.kprobes import reserved_area_frees
from memledger.tracer.memblock import whole_pages_bytes

__all__ = ("KernelAccounting", "account_kernel")

PAGE = 4096


@dataclass(slots=True)
class KernelAccounting:
    boot_reserved_bytes: int | None = None
    freed_by_name: dict[str, int] = field(default_factory=dict)
    freed_after_memory_line_bytes: int | None = None
    present_bytes: int | None = None
    managed_bytes: int | None = None
    memtotal_bytes: int | None = None
    unmanaged_totalram_bytes: int | None = None
    residual_bytes: int | None = None
    silent_freed_bytes: int | None = None
    silent_freed_by_caller: dict[str, int] = field(default_factory=dict)
    unexplained_residual_bytes: int | None = None
    # Σ pages x 4 KiB of free_reserved_area kretprobes, by the name the kernel prints in
    # its Freeing line (None without kprobe events in the boot trace).
    trace_freed_by_name: dict[str, int] | None = None
    # deferred_init=lazy: whether it is on, the pages it left at boot (from the log), and
    # the part of the residual taken as pages still uninitialised when this was read.
    lazy_deferred_init: bool = False
    lazy_left_at_boot_bytes: int | None = None
    lazy_uninitialised_bytes: int | None = None


def account_kernel(ev: Evidence, lazy_deferred: bool = False) -> KernelAccounting:
    """The kernel's own accounting; ``lazy_deferred`` when the command line asks for it."""
    out = KernelAccounting()
    log = ev.log
    if log is not None and log.lazy_deferred_pages is not None:
        lazy_deferred = True
        out.lazy_left_at_boot_bytes = log.lazy_deferred_pages * PAGE
    out.lazy_deferred_init = lazy_deferred
    if log is not None:
        for f in log.freeing:
            out.freed_by_name[f.name] = out.freed_by_name.get(f.name, 0) + f.kib * 1024
        if log.memory is not None and log.memory.reserved_kib is not None:
            out.boot_reserved_bytes = log.memory.reserved_kib * 1024
            mem_index = log.memory.at.index
            out.freed_after_memory_line_bytes = sum(
                f.kib * 1024 for f in log.freeing if f.at.index > mem_index)
        if log.memblock and log.memory is not None:
            out.silent_freed_bytes = 0
            for at, m in log.memblock:
                if m.op == "free_late" and at.index > log.memory.at.index:
                    size = whole_pages_bytes(m.start, m.end)
                    out.silent_freed_bytes += size
                    caller = m.caller_fn or "?"
                    out.silent_freed_by_caller[caller] = out.silent_freed_by_caller.get(caller, 0) + size
    if ev.zones is not None:
        out.present_bytes = PAGE * sum(z.present for z in ev.zones)
        out.managed_bytes = PAGE * sum(z.managed for z in ev.zones)
    if ev.meminfo is not None and "MemTotal" in ev.meminfo:
        out.memtotal_bytes = ev.meminfo["MemTotal"]
        if out.managed_bytes is not None:
            out.unmanaged_totalram_bytes = out.memtotal_bytes - out.managed_bytes
    if (out.boot_reserved_bytes is not None and out.present_bytes is not None
            and out.managed_bytes is not None and out.freed_after_memory_line_bytes is not None):
        out.residual_bytes = (out.boot_reserved_bytes
                              - (out.present_bytes - out.managed_bytes)
                              - out.freed_after_memory_line_bytes)
        waiting = 0
        # deferred_grow_zone() initialising struct pages when an allocation needs them:
        # c9e97a1997fb ("mm: initialize pages on demand during boot", v4.17);
        # deferred_init=lazy leaves the rest to it after boot.
        if lazy_deferred and out.residual_bytes < 0:
            bound = out.lazy_left_at_boot_bytes
            waiting = -out.residual_bytes if bound is None else min(-out.residual_bytes, bound)
            out.lazy_uninitialised_bytes = waiting
        # Before a4b0bf6a40f3 memblock_free_late() counts every page in totalram but hands
        # the still-deferred ones to no zone: those never left "present - managed", and
        # MemTotal - Σmanaged is exactly them (the leak), so they are no silent free.
        leaked = 0
        if out.silent_freed_bytes and not lazy_deferred and out.unmanaged_totalram_bytes:
            leaked = max(0, min(out.unmanaged_totalram_bytes, out.silent_freed_bytes))
        if out.silent_freed_bytes is not None or lazy_deferred:
            out.unexplained_residual_bytes = (out.residual_bytes + waiting
                                              - ((out.silent_freed_bytes or 0) - leaked))
    named = [(a.name, a.pages) for a in reserved_area_frees(ev.trace)
             if a.name is not None and a.pages is not None]
    if named:
        out.trace_freed_by_name = {}
        for name, pages in named:
            out.trace_freed_by_name[name] = out.trace_freed_by_name.get(name, 0) + pages * PAGE
    return out
