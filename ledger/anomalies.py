"""Anomalies: what in a boot's ledger an operator should look at, with the evidence."""

from __future__ import annotations

from dataclasses import dataclass

from memledger.ledger.accounting import KernelAccounting
from memledger.ledger.boot_services import BootServices
from memledger.ledger.lowmem import LowMemory, keeps_first_mib
from memledger.ledger.model import FidelityDoc, KernelDoc
from memledger.tracer.evidence import Evidence

__all__ = ("CODES", "Anomaly", "find_anomalies")

# Every code find_anomalies() can emit (metrics export each, 0 when absent).
CODES = ("efi_debug_set", "log_truncated", "cmdline_truncated", "low_memory_freed", "leak",
         "accounting_residual", "kept_unexplained", "reclaim_mismatch", "reclaim_unknown",
         "trace_overflowed", "kexec_boot", "bad_input")


@dataclass(frozen=True, slots=True)
class Anomaly:
    code: str
    severity: str  # "info", "warning" or "error"
    message: str
    evidence: str


def _kib(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} bytes"


def find_anomalies(ev: Evidence, *, kernel: KernelDoc, efi: bool | None, fidelity: FidelityDoc,
                   bs: BootServices, low: LowMemory, acct: KernelAccounting,
                   efi_debug: bool) -> list[Anomaly]:
    """What an operator should look at in one boot's account, each with its evidence."""
    out: list[Anomaly] = []
    add = out.append
    log = ev.log
    where = ev.log_path or ev.source

    # On a BIOS boot (or one whose firmware the log does not show) efi=debug does nothing.
    if efi_debug and efi:
        add(Anomaly("efi_debug_set", "warning",
                    "efi=debug is set: the kernel keeps all EFI boot-services memory "
                    "(efi_free_boot_services returns early)",
                    f"cmdline: {kernel['cmdline_source'] or 'log'}"))
    if log is not None and not log.complete:
        add(Anomaly("log_truncated", "warning",
                    "the kernel log does not start at 'Linux version': early messages were "
                    "lost (ring buffer wrapped or capture started late)",
                    f"{where}:{log.first_lineno}"))
    # kernel_init() prints "Freeing unused kernel image (initmem) memory" (before 5.0:
    # "unused kernel memory"; with debug_pagealloc "debug: unmapping init"), "Write
    # protecting the kernel read-only data" and "Run /init as init process" once every
    # initcall has run, efi_free_boot_services() too (an arch_initcall since a4b0bf6a40f3;
    # earlier, in efi_enter_virtual_mode()). Any of them ends kernel init.
    ends_early = log is not None and log.message_count > 0 and log.init_done is None
    if ends_early and log is not None:
        add(Anomaly("log_truncated", "warning",
                    "the kernel log ends before the end of kernel init (no 'Freeing unused "
                    "kernel', 'Write protecting the kernel read-only data' or 'Run … as init "
                    "process' line): later messages were lost (log cut short)",
                    f"{where}:{log.last_lineno}"))
    if kernel["cmdline_truncated"]:
        add(Anomaly("cmdline_truncated", "info",
                    "the command line comes from the log, where printk cuts it at about 1 KiB; "
                    "/proc/cmdline was not available", f"{where}"))
    if low.freed_bytes:
        if keeps_first_mib(log, kernel["release"]) is False:
            # Without f1d4d47c5851 (v5.13) efi_free_boot_services() frees below 1 MiB too.
            add(Anomaly("low_memory_freed", "info",
                        f"{_kib(low.freed_bytes)} below 1 MiB was freed, as kernels without "
                        "f1d4d47c5851 ('x86/setup: Always reserve the first 1M of RAM', v5.13) do; "
                        "BIOS code or a kdump kernel may clobber it", f"source: {low.freed_source}"))
        else:
            add(Anomaly("low_memory_freed", "error",
                        f"{_kib(low.freed_bytes)} below 1 MiB was freed; since v5.13 (f1d4d47c5851) "
                        "the whole first MiB must stay reserved", f"source: {low.freed_source}"))
    if bs.leaked_bytes:
        add(Anomaly("leak", "error" if bs.leaked_bytes > 0 else "warning",
                    f"MemTotal and Σ zone managed pages differ by {_kib(bs.leaked_bytes)}: pages "
                    "counted in totalram were never given to the page allocator (the "
                    "deferred-init memblock_free_late leak)", "proc/meminfo, proc/zoneinfo"))
    residual = acct.residual_bytes
    if residual:
        explained = acct.unexplained_residual_bytes == 0
        callers = ", ".join(f"{k} {_kib(v)}" for k, v in acct.silent_freed_by_caller.items())
        causes = []
        if callers:
            leak = bs.leaked_bytes
            causes.append(f"silent memblock_free_late frees ({callers})"
                       + (f" less the {_kib(leak)} of them that stayed deferred (the leak)"
                          if leak and leak > 0 else ""))
        if acct.lazy_uninitialised_bytes:
            causes.append(f"{_kib(acct.lazy_uninitialised_bytes)} of pages that lazy deferred "
                          "init (deferred_init=lazy) had not yet initialised: deferred init is "
                          "still in progress, pages join their zone's managed count as "
                          "allocations need them, so the residual shrinks towards 0 over time "
                          "(not a leak)")
        add(Anomaly("accounting_residual", "info" if explained else "warning",
                    f"'Memory: …K reserved' differs from (present - managed) + later Freeing "
                    f"lines by {_kib(residual)}"
                    + (f"; explained by {' and '.join(causes)}" if explained and causes else ""),
                    f"{where}:{log.memory.at.lineno}" if log and log.memory else where))
    reasons = bs.kept_by_reason or {}
    unexplained = reasons.get("unexplained")
    if unexplained:
        add(Anomaly("kept_unexplained", "warning" if unexplained > 0 else "error",
                    f"{_kib(abs(unexplained))} of kept boot-services memory "
                    + ("has no known reason" if unexplained > 0 else
                       "is over-explained: the sources disagree"),
                    f"total from {bs.total_source}, reclaimed from {bs.reclaimed_source}"))
    cc = bs.cross_checks
    checks = {k: cc.get(k) for k in ("freeing_line_bytes", "memblock_free_late_bytes",
                                     "trace_freed_bytes")}
    known = {k: v for k, v in checks.items() if v is not None}
    if len(set(known.values())) > 1:
        add(Anomaly("reclaim_mismatch", "warning",
                    "the sources of the reclaimed figure disagree: "
                    + ", ".join(f"{k}={v}" for k, v in known.items()), where))
    kdump = bool(kernel["kdump"])
    if kernel["kexec"]:
        add(Anomaly("kexec_boot", "info",
                    ("a kdump capture kernel, " if kdump else "")
                    + "started by kexec: the firmware's EFI boot-services memory was freed by the "
                    "kernel before this one, so this boot has no reclaim to measure (not a leak)",
                    f"sys/kernel/boot_params/data: type_of_loader "
                    f"{ev.loader.type_of_loader:#04x}" if ev.loader and ev.loader.kexec else
                    f"cmdline: elfcorehdr= ({kernel['cmdline_source']})"))
    elif efi and not efi_debug and bs.reclaimed_bytes is None and log is not None and log.complete:
        if ends_early:
            why = "the log ends before the kernel had finished booting (see log_truncated)"
        elif fidelity["memblock_debug"] or fidelity["boot_trace"]:
            # a4b0bf6a40f3 frees with free_reserved_area(), which memblock=debug does not
            # log, and prints its total only when it freed something.
            why = ("neither a 'Freeing EFI boot services memory' line nor any "
                   "memblock_free_late from efi_free_boot_services: nothing was freed, or "
                   "freed by a path this log does not show")
        else:
            why = ("the kernel predates the 'Freeing EFI boot services memory' line "
                   "(a4b0bf6a40f3) and neither memblock=debug nor a boot trace was captured")
        add(Anomaly("reclaim_unknown", "info", f"no record of the boot-services free: {why}",
                    where))
    if fidelity["trace_overflowed"]:
        add(Anomaly("trace_overflowed", "warning",
                    "the trace ring buffer overwrote entries; raise trace_buf_size",
                    ", ".join(ev.trace_paths)))
    efi_lines = [f for f in (log.freeing if log else []) if f.name == "EFI boot services"]
    if len(efi_lines) > 1:
        # a4b0bf6a40f3: efi_free_boot_services() prints its total once per boot.
        values = sorted({f.kib for f in efi_lines})
        add(Anomaly("bad_input", "warning",
                    f"'Freeing EFI boot services memory' appears {len(efi_lines)} times in one "
                    "boot; the kernel prints it once: repeated log lines"
                    + (" (counted once)" if len(values) == 1 else
                       f" with different totals ({', '.join(f'{v}K' for v in values)}): "
                       "reclaimed is unknown"),
                    ", ".join(f"{where}:{f.at.lineno}" for f in efi_lines[:5])))
    for src, msg in ev.problems:
        add(Anomaly("bad_input", "warning", msg, src))
    return out
