"""The first MiB: what E820 calls RAM there, what the kernel kept, and what it freed.

Since f1d4d47c5851 ("x86/setup: Always reserve the first 1M of RAM", v5.13) the kernel
memblock-reserves all of [0, 1 MiB) and efi_free_boot_services() never frees below it,
so ``freed_bytes`` must be 0; anything else is a regression (or a pre-5.13 kernel).
Whether a kernel has that clamp is read from its log where the log can tell
(:func:`keeps_first_mib`): a stable kernel without it may still carry later fixes.
"""

from __future__ import annotations

from dataclasses import dataclass

from memledger.ledger.kernelver import at_least
from memledger.tracer import intervals as iv
from memledger.tracer.bootlog import KernelLog
from memledger.tracer.evidence import Evidence

__all__ = ("LowMemory", "account_low_memory", "keeps_first_mib")

SZ_1M = 1 << 20


def keeps_first_mib(log: KernelLog | None, release: str | None) -> bool | None:
    """Whether this kernel keeps all of [0, 1 MiB) reserved and never frees boot services there.

    f1d4d47c5851 ("x86/setup: Always reserve the first 1M of RAM", v5.13) did both in one
    commit: reserve_real_mode() memblock-reserves [0, 1 MiB) whole, and
    efi_free_boot_services() skips what lies below it. A memblock=debug log that shows that
    reservation proves the clamp whatever the release says (a vendor kernel may carry it);
    otherwise the release decides. 5.10's stable kernels lack it (their memblock=debug
    shows only the first 64 KiB reserved), and their backport of a4b0bf6a40f3 still frees
    what efi_reserve_boot_services() reserved below 1 MiB.
    """
    if log is not None and any(m.op == "reserve" and m.start == 0 and m.end >= SZ_1M
                               for _, m in log.memblock):
        return True
    return at_least(release, 5, 13)


@dataclass(slots=True)
class LowMemory:
    usable_bytes: int | None = None
    reserved_bytes: int | None = None
    boot_services_bytes: int | None = None
    freed_bytes: int | None = None
    crashkernel_low_bytes: int | None = None
    crashkernel_bytes: int | None = None
    reserved_source: str | None = None
    freed_source: str | None = None


def account_low_memory(ev: Evidence, params: dict[str, list[str]], release: str | None,
                       bs_span: iv.Span | None, trace_phys: list[tuple[int, int]],
                       bs_freed: iv.Span | None = None) -> LowMemory:
    """The first MiB; ``bs_freed`` is what the boot-services account found freed below it."""
    out = LowMemory()
    log = ev.log
    ram = ev.firmware_ram()
    if ram is not None:
        out.usable_bytes = iv.length(iv.clip(ram, 0, SZ_1M))

    # f1d4d47c5851 ("x86/setup: Always reserve the first 1M of RAM", v5.13).
    rule_5_13 = keeps_first_mib(log, release)
    whole = [m for _, m in (log.memblock if log else [])
             if m.op == "reserve" and m.start == 0 and m.end >= SZ_1M]
    if out.usable_bytes is not None:
        if whole:
            out.reserved_bytes, out.reserved_source = out.usable_bytes, "memblock"
        elif rule_5_13:
            # f1d4d47c5851 (v5.13): reserve_real_mode() ends with memblock_reserve(0, SZ_1M).
            out.reserved_bytes, out.reserved_source = out.usable_bytes, "kernel_rule"

    if bs_span is not None:
        out.boot_services_bytes = iv.length(iv.clip(bs_span, 0, SZ_1M))

    # Range-level evidence of late frees: memblock_free_late (memblock=debug), the
    # boot-services regions a kernel without the clamp frees, and free_reserved_area
    # kprobes that recorded page_offset_base.
    late = [(m.start, m.end) for _, m in (log.memblock if log else []) if m.op == "free_late"]
    if (log is not None and log.memblock) or trace_phys:
        freed = iv.spans(late) | iv.spans(trace_phys) | (bs_freed or iv.EMPTY)
        out.freed_bytes, out.freed_source = iv.length(iv.clip(freed, 0, SZ_1M)), "ranges"
    elif rule_5_13:
        # f1d4d47c5851 added the SZ_1M clamp to efi_free_boot_services(): nothing below.
        out.freed_bytes, out.freed_source = 0, "kernel_rule"

    crash = log.crashkernel if log else []
    low = [c for c in crash if c.low]
    main = [c for c in crash if not c.low]
    requested = any(k.startswith("crashkernel") for k in params)
    if low:
        out.crashkernel_low_bytes = sum(c.size for c in low)
    elif not requested or (log is not None and log.complete):
        out.crashkernel_low_bytes = 0
    if main:
        out.crashkernel_bytes = sum(c.size for c in main)
    elif not requested or (log is not None and log.complete):
        out.crashkernel_bytes = 0
    return out
