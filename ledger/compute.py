"""The per-boot ledger: one account of what firmware and early boot held, what came back,
what was kept and why, and whether anything leaked.

:func:`compute_ledger` is pure: :class:`~memledger.tracer.evidence.Evidence` in,
:class:`Ledger` out. :meth:`Ledger.as_dict` gives the JSON document, typed in
:mod:`memledger.ledger.model`. Unknown values are None (JSON null), never 0.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from memledger.ledger.accounting import KernelAccounting, account_kernel
from memledger.ledger.anomalies import Anomaly, find_anomalies
from memledger.ledger.boot_services import (
    BootServices,
    TraceFree,
    account_boot_services,
    trace_efi_free,
)
from memledger.ledger.lowmem import LowMemory, account_low_memory
from memledger.ledger.model import (
    SCHEMA_VERSION,
    AnomalyDoc,
    BootDoc,
    FidelityDoc,
    FirmwareDoc,
    KernelAccountingDoc,
    KernelDoc,
    LedgerDoc,
    LowMemoryDoc,
)
from memledger.ledger.vendors import vendor_name
from memledger.tracer.evidence import Evidence

__all__ = ("SCHEMA_VERSION", "Ledger", "compute_ledger", "parse_cmdline")

# A printk record holds at most ~1 KiB; a "Command line:" line this long was probably cut.
_CMDLINE_CUT = 960


@dataclass(slots=True)
class Ledger:
    boot: BootDoc
    kernel: KernelDoc
    firmware: FirmwareDoc
    efi_boot_services: BootServices
    low_memory: LowMemory
    kernel_accounting: KernelAccounting
    fidelity: FidelityDoc
    anomalies: list[Anomaly] = field(default_factory=list)

    def as_dict(self) -> LedgerDoc:
        bs = self.efi_boot_services
        low, acct = self.low_memory, self.kernel_accounting
        return {
            "schema_version": SCHEMA_VERSION,
            "boot": self.boot,
            "kernel": self.kernel,
            "firmware": self.firmware,
            "efi_boot_services": {
                "total_bytes": bs.total_bytes,
                "reclaimed_bytes": bs.reclaimed_bytes,
                "kept_bytes": bs.kept_bytes,
                "kept_by_reason": bs.kept_by_reason,
                "leaked_bytes": bs.leaked_bytes,
                "runtime_by_cause": bs.runtime_by_cause,
                "total_source": bs.total_source,
                "reclaimed_source": bs.reclaimed_source,
                "regions": bs.regions,
                "cross_checks": bs.cross_checks,
            },
            "low_memory": LowMemoryDoc(
                usable_bytes=low.usable_bytes, reserved_bytes=low.reserved_bytes,
                boot_services_bytes=low.boot_services_bytes, freed_bytes=low.freed_bytes,
                crashkernel_low_bytes=low.crashkernel_low_bytes,
                crashkernel_bytes=low.crashkernel_bytes, reserved_source=low.reserved_source,
                freed_source=low.freed_source),
            "kernel_accounting": KernelAccountingDoc(
                boot_reserved_bytes=acct.boot_reserved_bytes,
                freed_by_name=dict(acct.freed_by_name),
                freed_after_memory_line_bytes=acct.freed_after_memory_line_bytes,
                present_bytes=acct.present_bytes, managed_bytes=acct.managed_bytes,
                memtotal_bytes=acct.memtotal_bytes,
                unmanaged_totalram_bytes=acct.unmanaged_totalram_bytes,
                residual_bytes=acct.residual_bytes, silent_freed_bytes=acct.silent_freed_bytes,
                silent_freed_by_caller=dict(acct.silent_freed_by_caller),
                unexplained_residual_bytes=acct.unexplained_residual_bytes,
                trace_freed_by_name=(dict(acct.trace_freed_by_name)
                                     if acct.trace_freed_by_name is not None else None),
                lazy_deferred_init=acct.lazy_deferred_init,
                lazy_left_at_boot_bytes=acct.lazy_left_at_boot_bytes,
                lazy_uninitialised_bytes=acct.lazy_uninitialised_bytes),
            "fidelity": self.fidelity,
            "anomalies": [AnomalyDoc(code=a.code, severity=a.severity, message=a.message,
                                     evidence=a.evidence) for a in self.anomalies],
        }


def parse_cmdline(cmdline: str | None) -> dict[str, list[str]]:
    """Kernel parameters → values (a bare flag has the value ``""``)."""
    out: dict[str, list[str]] = {}
    if not cmdline:
        return out
    if not any(q in cmdline for q in "\"'\\"):
        words = cmdline.split()  # what shlex gives for a line without quotes, 20 times faster
    else:
        try:
            words = shlex.split(cmdline)
        except ValueError:
            words = cmdline.split()
    for word in words:
        if word == "--":
            break  # the rest goes to init
        key, _, value = word.partition("=")
        out.setdefault(key, []).append(value)
    return out


def _kernel(ev: Evidence, cmdline: str | None, source: str | None,
            params: dict[str, list[str]]) -> KernelDoc:
    log = ev.log
    release = ev.osrelease or (log.release if log else None)
    truncated = source == "log" and len(cmdline or "") + len("Command line: ") >= _CMDLINE_CUT
    # A kdump capture kernel is always started by kexec, and kexec-tools gives it
    # elfcorehdr= (the address of the crashed kernel's ELF core header).
    kdump = "elfcorehdr" in params if cmdline is not None else None
    # Started by kexec: the boot_params loader type says so, and a kdump kernel always is.
    kexec = True if (ev.loader is not None and ev.loader.kexec) or kdump else (
        False if ev.loader is not None else None)
    return KernelDoc(release=release, cmdline=cmdline, cmdline_source=source,
                     cmdline_truncated=truncated if cmdline is not None else None,
                     kdump=kdump, kexec=kexec,
                     loader=ev.loader.name if ev.loader else None,
                     type_of_loader=ev.loader.type_of_loader if ev.loader else None)


def _cmdline(ev: Evidence) -> tuple[str | None, str | None]:
    """The command line and where it came from: /proc/cmdline first, else the log."""
    if ev.proc_cmdline is not None:
        return ev.proc_cmdline, "proc"
    if ev.log is not None and ev.log.cmdline is not None:
        return ev.log.cmdline, "log"
    return None, None


def _efi_state(ev: Evidence, tf: TraceFree | None) -> bool | None:
    log = ev.log
    if (log is not None and log.efi) or ev.efi_sysfs or ev.runtime_map:
        return True
    if log is not None and (log.efi_memmap
                            or any(f.name == "EFI boot services" for f in log.freeing)
                            or any(m.caller_fn == "efi_reserve_boot_services" for _, m in log.memblock)):
        return True  # the banner was lost (truncated log), but EFI code ran
    if tf is not None:
        return True  # the boot trace saw efi_free_boot_services free memory
    if (log is not None and log.complete) or ev.efi_sysfs is False:
        return False
    return None


def _firmware(ev: Evidence, efi: bool | None) -> FirmwareDoc:
    log = ev.log
    efi_vendor = log.efi_vendor if log else None
    return FirmwareDoc(
        efi=efi,
        vendor=vendor_name((ev.dmi or {}).get("bios_vendor") or efi_vendor),
        efi_version=log.efi_version if log else None,
        efi_vendor=efi_vendor,
        dmi=ev.dmi,
        dmi_line=log.dmi if log else None,
    )


def _fidelity(ev: Evidence, params: dict[str, list[str]], efi_debug: bool,
              notes: list[str]) -> FidelityDoc:
    log = ev.log
    trace = ev.trace
    sources = {
        "kernel_log": log is not None,
        "proc_cmdline": ev.proc_cmdline is not None,
        "proc_meminfo": ev.meminfo is not None,
        "proc_zoneinfo": ev.zones is not None,
        "proc_iomem": ev.iomem is not None and not ev.iomem_hidden,
        "firmware_memmap": ev.firmware_memmap is not None,
        "efi_runtime_map": ev.runtime_map is not None,
        "memblock_debugfs": ev.memblock_reserved is not None,
        "ftrace": trace is not None and bool(trace.events),
        "dmi": ev.dmi is not None,
    }
    return FidelityDoc(
        sources=sources,
        unreadable=sorted(ev.unreadable),
        log_format=log.format if log else None,
        log_complete=log.complete if log else None,
        log_lines=[log.first_lineno, log.last_lineno] if log else None,
        efi_debug=efi_debug,
        memblock_debug=("memblock" in params and "debug" in ",".join(params["memblock"]))
        or bool(log and log.memblock),
        efi_memmap_printed=bool(log and log.efi_memmap),
        boot_trace=trace is not None and bool(trace.events),
        trace_overflowed=trace.overflowed if trace is not None else None,
        problems=[f"{src}: {msg}" for src, msg in ev.problems],
        notes=notes,
    )


def _kexec_boot_services(bs: BootServices, how: str) -> None:
    """A kernel started by kexec (boot_params type_of_loader 0xD0, tracer/bootparams.py;
    or a kdump kernel, known from elfcorehdr= on its command line) gets the EFI memory map
    its predecessor kept: the boot-services regions were freed (and, from v6.1's
    efi_free_boot_services, dropped from the map) before it ran. So this boot has no
    reclaim to measure: total, reclaimed and kept are unknown here, never 0, and the leak
    check (MemTotal against the zones) still applies."""
    for name in ("total_bytes", "reclaimed_bytes", "kept_bytes", "kept_by_reason",
                 "runtime_by_cause", "total_source", "reclaimed_source", "regions"):
        setattr(bs, name, None)
    bs.span = None
    bs.notes.append(f"started by kexec ({how}): the firmware's boot-services memory was "
                    "handled by the kernel before this one")


def compute_ledger(ev: Evidence) -> Ledger:
    """The ledger of one boot."""
    cmdline, cmdline_source = _cmdline(ev)
    params = parse_cmdline(cmdline)
    kernel = _kernel(ev, cmdline, cmdline_source, params)
    release = kernel["release"]
    tf = trace_efi_free(ev.trace)
    efi = _efi_state(ev, tf)
    efi_values = [v for raw in params.get("efi", []) for v in raw.split(",")]
    # efi=debug on the cmdline, or its trace in the log when the cmdline was cut.
    efi_debug = "debug" in efi_values or bool(ev.log and ev.log.efi_debug_segments_warning)
    bs = account_boot_services(ev, efi_debug, release, efi, tf)
    if ev.loader is not None and ev.loader.kexec and efi:
        _kexec_boot_services(bs, f"boot_params type_of_loader {ev.loader.type_of_loader:#04x}")
    elif kernel["kdump"] and efi:
        _kexec_boot_services(bs, "a kdump kernel: elfcorehdr= on its command line")
    low = account_low_memory(ev, params, release, bs.span, tf.phys_ranges if tf else [],
                             bs.freed_below_1m)
    lazy = "lazy" in params.get("deferred_init", [])
    acct = account_kernel(ev, lazy)
    if acct.lazy_deferred_init and bs.leaked_bytes:
        # MemTotal counts the pages lazy deferred init has not handed to a zone yet, and
        # no counter says how many those are: a leak cannot be told from them.
        bs.leaked_bytes = None
        bs.notes.append("deferred_init=lazy: MemTotal - Σ managed includes pages not yet "
                        "initialised, so a leak cannot be measured on this boot")
    fidelity = _fidelity(ev, params, efi_debug, bs.notes)
    boot = BootDoc(
        index=ev.boot_index,
        of=ev.boot_count,
        boot_id=ev.boot_id or (ev.log.boot_id if ev.log else None),
        machine_id=ev.machine_id,
        source=ev.source,
    )
    firmware = _firmware(ev, efi)
    anomalies = find_anomalies(ev, kernel=kernel, efi=efi, fidelity=fidelity, bs=bs, low=low,
                               acct=acct, efi_debug=efi_debug)
    return Ledger(boot, kernel, firmware, bs, low, acct, fidelity, anomalies)
