"""The EFI boot-services account of one boot: total, reclaimed, kept (and why), leaked.

The rules follow the kernel's own decisions, in its order (arch/x86/platform/efi/quirks.c:
efi_reserve_boot_services, efi_free_boot_services, efi_unmap_boot_services):

1. ``efi=debug``: efi_free_boot_services()/efi_unmap_boot_services() return early ("Keep
   all regions for /sys/kernel/debug/efi"), so everything is kept (reason ``efi_debug``).
2. A boot-services region that was already reserved, is not all E820 RAM, or overlaps the
   kernel image is tagged EFI_MEMORY_RUNTIME by efi_reserve_boot_services() and skipped
   (reason ``runtime``). Such regions stay in /sys/firmware/efi/runtime-map with type 3/4.
3. Parts reserved later by efi_mem_reserve() (BGRT image, ESRT, TPM log, …) are split out
   of a kernel-owned region by efi_arch_mem_reserve(), which prints
   ``e820: update [mem …] usable ==> reserved`` (reason ``efi_mem_reserve``). From 7.1
   (259e3e6f9382, "efi: Tag memblock reservations of boot services regions as
   RSRV_KERN") the same reservations are MEMBLOCK_RSRV_KERN (reason ``rsrv_kern``).
4. Nothing below 1 MiB is freed (f1d4d47c5851, v5.13: "x86/setup: Always reserve the
   first 1M of RAM"), reason ``below_1m``. A kernel without that clamp (5.10's stable
   kernels, whose backport of a4b0bf6a40f3 frees at arch_initcall too) frees the regions
   it owns there like any other, and counts them in its Freeing line.

The identity ``total = reclaimed + kept`` is exact by construction; what the evidence
cannot attribute goes to ``unexplained`` (negative when the reasons cover more than was
kept, which points at inconsistent sources and raises an anomaly).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memledger.ledger.kernelver import at_least
from memledger.ledger.lowmem import keeps_first_mib
from memledger.tracer import intervals as iv
from memledger.tracer.efimap import EFI_PAGE_SIZE
from memledger.tracer.evidence import Evidence
from memledger.tracer.ftrace import TraceLog
from memledger.tracer.kprobes import reserved_area_frees
from memledger.tracer.memblock import MEMBLOCK_RSRV_KERN, whole_pages_bytes

__all__ = ("KEPT_REASONS", "BootServices", "TraceFree", "account_boot_services", "trace_efi_free")

KEPT_REASONS = ("below_1m", "efi_debug", "runtime", "efi_mem_reserve", "rsrv_kern", "unexplained")
RUNTIME_CAUSES = ("already_reserved", "not_ram", "kernel_image", "unknown")
SZ_1M = 1 << 20
PAGE = 4096
EFI_FREE_FN = "efi_free_boot_services"


@dataclass(slots=True)
class TraceFree:
    """What the boot trace shows of the EFI boot-services free."""

    pages: int | None  # Σ free_reserved_area return values called from efi_free_boot_services
    calls: int  # free_reserved_area calls from efi_free_boot_services (function tracer)
    phys_ranges: list[tuple[int, int]]  # when the probe recorded page_offset_base


@dataclass(slots=True)
class BootServices:
    total_bytes: int | None = None
    reclaimed_bytes: int | None = None
    kept_bytes: int | None = None
    kept_by_reason: dict[str, int | None] | None = None
    leaked_bytes: int | None = None
    runtime_by_cause: dict[str, int] | None = None
    total_source: str | None = None
    reclaimed_source: str | None = None
    regions: int | None = None
    cross_checks: dict[str, int | None] = field(default_factory=dict)
    # Internal: the byte set, and what of it the kernel freed below 1 MiB, used by the
    # low-memory account.
    span: iv.Span | None = None
    freed_below_1m: iv.Span | None = None
    notes: list[str] = field(default_factory=list)


def trace_efi_free(trace: TraceLog | None) -> TraceFree | None:
    """Pages freed by efi_free_boot_services according to kprobes or the function tracer."""
    if trace is None or not trace.events:
        return None
    calls = sum(1 for e in trace.events
                if e.is_function and e.name == "free_reserved_area" and e.parent == EFI_FREE_FN)
    pages: int | None = None
    ranges: list[tuple[int, int]] = []
    for f in reserved_area_frees(trace):
        if f.caller != EFI_FREE_FN:
            continue
        if f.pages is not None:
            pages = (pages or 0) + f.pages
        if (rng := f.phys_range) is not None:
            ranges.append(rng)
    if pages is None and calls == 0:
        return None
    return TraceFree(pages, calls, ranges)


def _page_span(start: int, end: int) -> iv.Span:
    """The whole pages a byte range touches (efi_arch_mem_reserve rounds out to pages)."""
    return iv.span(start - start % EFI_PAGE_SIZE, -(-end // EFI_PAGE_SIZE) * EFI_PAGE_SIZE)


def _runtime_causes(ev: Evidence, parts: iv.Span, reserved_before: iv.Span) -> dict[str, int]:
    """Split RUNTIME-tagged boot-services bytes by the reason efi_reserve_boot_services had."""
    log = ev.log
    already = reserved_before
    # f1d4d47c5851 (v5.13): early_reserve_memory() reserves the first 64K before EFI runs.
    already |= iv.span(0, 0x10000)
    if log is not None:
        memattr = log.efi_tables.get("MEMATTR")
        if memattr is not None:
            already |= iv.span(memattr, memattr + 1)
        if log.ramdisk is not None:
            already |= iv.span(*log.ramdisk)
    kernel = iv.EMPTY
    if ev.iomem and not ev.iomem_hidden:
        names = [e for e in ev.iomem if e.name.startswith("Kernel ")]
        if names:
            kernel = iv.span(min(e.start for e in names), max(e.end for e in names))
    ram = ev.firmware_ram()
    out = dict.fromkeys(RUNTIME_CAUSES, 0)
    for atom in parts:
        if atom.empty:
            continue
        if atom.overlaps(already):
            out["already_reserved"] += iv.length(atom)
        elif atom.overlaps(kernel):
            out["kernel_image"] += iv.length(atom)
        elif ram is not None and not atom in ram:  # noqa: E713 (portion containment)
            out["not_ram"] += iv.length(atom)
        else:
            out["unknown"] += iv.length(atom)
    return out


def account_boot_services(ev: Evidence, efi_debug: bool, release: str | None,
                          efi: bool | None, tf: TraceFree | None) -> BootServices:
    """Compute the boot-services account; every unknown figure stays None."""
    bs = BootServices()
    log = ev.log
    if efi is not True:
        if efi is None:
            bs.notes.append("firmware type unknown: no EFI banner in the log and no sysfs")
        return bs

    memmap = iv.spans((d.start, d.end) for d in (log.efi_memmap if log else []) if d.boot_services)
    memblock_seen = bool(log and log.memblock)
    reserves = [(at, m) for at, m in (log.memblock if log else []) if m.op == "reserve"]
    efi_reserves = [(at, m) for at, m in reserves if m.caller_fn == "efi_reserve_boot_services"]
    owned = iv.spans((m.start, m.end) for _, m in efi_reserves)
    first_efi = efi_reserves[0][0].index if efi_reserves else None
    reserved_before = iv.spans((m.start, m.end) for at, m in reserves
                               if first_efi is not None and at.index < first_efi)
    runtime_entries = [e for e in ev.runtime_map or [] if e.boot_services]
    runtime_all = iv.spans((e.start, e.end) for e in runtime_entries)

    cc = bs.cross_checks
    cc["efi_memmap_bytes"] = iv.length(memmap) if log and log.efi_memmap else None
    cc["memblock_reserved_bytes"] = iv.length(owned) if memblock_seen else None
    cc["runtime_map_bytes"] = iv.length(runtime_all) if ev.runtime_map is not None else None

    # --- total ---------------------------------------------------------------------
    total_span: iv.Span | None = None
    if log and log.efi_memmap:
        total_span, bs.total_source = memmap, "efi_memmap"
        bs.regions = sum(1 for d in log.efi_memmap if d.boot_services)
    elif memblock_seen and log is not None and log.complete:
        total_span = owned | runtime_all
        bs.total_source = "memblock+runtime_map" if ev.runtime_map is not None else "memblock"
        bs.regions = len({(m.start, m.end) for _, m in efi_reserves}) + sum(1 for e in runtime_entries
                                             if iv.span(e.start, e.end) not in owned)
        if ev.runtime_map is None:
            bs.notes.append("runtime-map unreadable or absent: regions the kernel kept as "
                            "RUNTIME because they were already reserved are not in the total")
    bs.span = total_span
    if total_span is not None:
        bs.total_bytes = iv.length(total_span)

    # --- reclaimed -----------------------------------------------------------------
    efi_lines = [f for f in (log.freeing if log else []) if f.name == "EFI boot services"]
    late = [m for _, m in (log.memblock if log else [])
            if m.op == "free_late" and m.caller_fn == "efi_free_boot_services"]
    # a4b0bf6a40f3: efi_free_boot_services() prints its total once per boot, and frees each
    # region once. More lines than that are repeated log lines (a shipper's retry, a
    # console's replay): a value seen again counts once; two different totals are unknown
    # (find_anomalies says which lines).
    efi_kib = {f.kib for f in efi_lines}
    cc["freeing_line_bytes"] = next(iter(efi_kib)) * 1024 if len(efi_kib) == 1 else None
    cc["memblock_free_late_bytes"] = (sum(whole_pages_bytes(s, e) for s, e in
                                          {(m.start, m.end) for m in late}) if late else None)
    cc["trace_freed_bytes"] = tf.pages * PAGE if tf and tf.pages is not None else None
    cc["trace_free_calls"] = tf.calls if tf else None
    if efi_lines:
        # a4b0bf6a40f3 (v7.0; Debian 6.1.170+ and 6.12.117): arch_initcall prints the total.
        if cc["freeing_line_bytes"] is not None:
            bs.reclaimed_bytes, bs.reclaimed_source = cc["freeing_line_bytes"], "kernel_log"
    elif late:
        # Before a4b0bf6a40f3: one memblock_free_late line per region with memblock=debug.
        bs.reclaimed_bytes, bs.reclaimed_source = cc["memblock_free_late_bytes"], "memblock_free_late"
    elif cc["trace_freed_bytes"] is not None:
        bs.reclaimed_bytes, bs.reclaimed_source = cc["trace_freed_bytes"], "boot_trace"
    elif efi_debug:
        bs.reclaimed_bytes, bs.reclaimed_source = 0, "efi_debug"

    # --- kept, by reason -------------------------------------------------------------
    reasons: dict[str, int | None] = dict.fromkeys(KEPT_REASONS)
    if total_span is not None and bs.reclaimed_bytes is not None:
        bs.kept_bytes = bs.total_bytes - bs.reclaimed_bytes  # type: ignore[operator]
    if ev.meminfo is not None and ev.zones is not None and "MemTotal" in ev.meminfo:
        # memblock_free_late() skips pages whose struct page deferred init has not set up
        # yet, but (before aa164612ca91, "mm/memblock: correct totalram_pages accounting
        # with KMSAN", v6.19) still counts them in totalram: MemTotal - Σmanaged is the
        # leak. a4b0bf6a40f3 ("x86/efi: defer freeing of boot services memory", v7.0)
        # frees after deferred init, so nothing is skipped.
        bs.leaked_bytes = ev.meminfo["MemTotal"] - PAGE * sum(z.managed for z in ev.zones)
    if efi_debug:
        reasons.update(dict.fromkeys(KEPT_REASONS, 0))
        reasons["efi_debug"] = bs.kept_bytes
        reasons["unexplained"] = 0 if bs.kept_bytes is not None else None
        bs.kept_by_reason = reasons
        return bs
    reasons["efi_debug"] = 0

    # efi_mem_reserve(): e820 updates RAM → reserved inside kernel-owned regions, and the
    # Boot Data runtime-map entries that match one exactly (efi_arch_mem_reserve requires
    # EFI_BOOT_SERVICES_DATA, which keeps page 0, a Boot Code page, out of it).
    updates = [c for _, c in (log.e820_changes if log else [])
               if c.op == "update" and c.old == "ram" and c.new == "reserved"]
    update_spans = [_page_span(c.start, c.end) for c in updates]
    emr = iv.EMPTY
    if memblock_seen:
        emr = iv.union(update_spans) & owned
    exact = {(int(s.lower), int(s.upper)) for s in update_spans}
    for e in runtime_entries:
        inside_owned = memblock_seen and iv.span(e.start, e.end) in owned
        if e.type == 4 and ((e.start, e.end) in exact or inside_owned):
            emr |= iv.span(e.start, e.end)
    runtime_only = runtime_all - emr
    if total_span is not None:
        emr &= total_span
        runtime_only &= total_span
    rsrv_kern_era = at_least(release, 7, 1)
    if memblock_seen or ev.runtime_map is not None:
        # From 7.1 (259e3e6f9382) efi_mem_reserve() tags its reservations MEMBLOCK_RSRV_KERN;
        # before that a v6.16+ "flags=20" reservation in the log is the only sign of it.
        flagged = iv.spans((m.start, m.end) for _, m in reserves
                           if m.flags is not None and m.flags & MEMBLOCK_RSRV_KERN)
        kern = emr if rsrv_kern_era else emr & flagged
        reasons["rsrv_kern"] = iv.length(kern)
        reasons["efi_mem_reserve"] = iv.length(emr - kern)
    elif rsrv_kern_era is False:
        reasons["rsrv_kern"] = 0  # before 7.1 (259e3e6f9382) no EFI region is RSRV_KERN
    if ev.runtime_map is not None:
        reasons["runtime"] = iv.length(runtime_only)
        bs.runtime_by_cause = _runtime_causes(ev, runtime_only, reserved_before)
    if total_span is not None:
        # Minus what a kernel without f1d4d47c5851's clamp freed there (low_memory_freed):
        # the memblock_free_late ranges before a4b0bf6a40f3; after it (5.10's backport)
        # efi_unmap_boot_services() queues every region efi_reserve_boot_services() owned
        # and did not tag RUNTIME, and the arch_initcall frees them with no line per range.
        low_all = iv.clip(total_span, 0, SZ_1M) - runtime_only - emr
        freed_low = iv.clip(iv.spans((m.start, m.end) for m in late), 0, SZ_1M)
        if memblock_seen and keeps_first_mib(log, release) is False:
            freed_low |= iv.clip(owned, 0, SZ_1M) - runtime_only - emr
        bs.freed_below_1m = freed_low & low_all
        if log is not None and log.no_trampoline_memory and not freed_low.empty:
            # The trampoline then takes its size from the first region freed below 1 MiB
            # (efi_unmap_boot_services' "nasty quirk"); the log does not say how much.
            reasons["below_1m"] = None
        else:
            reasons["below_1m"] = iv.length(low_all - freed_low)
    if bs.kept_bytes is not None:
        known = sum(v for k, v in reasons.items() if k != "unexplained" and v is not None)
        reasons["unexplained"] = bs.kept_bytes - known
    bs.kept_by_reason = reasons
    return bs
