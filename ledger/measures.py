"""Which boots measure which figure (pure).

A figure is a measurement of a kernel only on a boot that can show it:

- a boot that is not EFI has no EFI boot-services memory at all;
- ``efi=debug`` keeps every boot-services page by design: such a boot frees none (so
  says nothing about reclaimed, kept or leaked), though its memory map's total is real;
- a kernel started by kexec (or a kdump kernel) got a memory map whose boot-services
  regions the kernel before it had already handled, so its EFI figures are unknown; its
  MemTotal against the zones (the leak check) still applies;
- a kernel log that lost its start or its end holds only part of the boot: its figures
  are what it saw, not what happened. Only the leak (from /proc) stands.

The ledger already says "unknown" (None) where a figure cannot be computed at all;
these rules leave out the values that were computed but do not measure the kernel.
``compare`` applies them, lists every boot left out with its reasons, and counts them
on request (``--include-all``).
"""

from __future__ import annotations

from typing import Any

from memledger.ledger.model import LedgerDoc

__all__ = ("BOOT_COLUMNS", "CAPTURE_CODES", "LEFT_OUT_OF", "REASONS", "anomaly_codes",
           "boot_columns", "measures", "reasons")

# Why a boot does not measure a figure, as the reports say it.
REASONS: dict[str, str] = {
    "not_efi": "not an EFI boot: it has no EFI boot-services memory",
    "efi_debug": "efi=debug keeps every boot-services page by design",
    "kexec": "started by kexec: the kernel before it handled the boot-services memory",
    "log_truncated": "its kernel log lost the start or the end of the boot",
}

# Figure name (store/compare.py FIGURES) → the reasons that leave a boot out of it.
LEFT_OUT_OF: dict[str, frozenset[str]] = {
    "total": frozenset({"not_efi", "kexec", "log_truncated"}),
    "reclaimed": frozenset({"not_efi", "efi_debug", "kexec", "log_truncated"}),
    "kept": frozenset({"not_efi", "efi_debug", "kexec", "log_truncated"}),
    "leaked": frozenset({"not_efi", "efi_debug"}),
    "low_usable": frozenset({"log_truncated"}),
    "low_reserved": frozenset({"log_truncated"}),
    "low_boot_services": frozenset({"not_efi", "kexec", "log_truncated"}),
    "low_freed": frozenset({"efi_debug", "kexec", "log_truncated"}),
    "anomalies": frozenset({"efi_debug", "kexec", "log_truncated"}),
}

# Anomaly codes about the capture or the boot's configuration, not about what the
# kernel did with memory: new ones on a candidate are reported, never a regression.
CAPTURE_CODES = frozenset({"efi_debug_set", "log_truncated", "cmdline_truncated",
                           "reclaim_unknown", "trace_overflowed", "kexec_boot", "bad_input"})

# The boots columns these come from (store/schema.py), written at ingest.
BOOT_COLUMNS = ("efi", "efi_debug", "kexec", "log_complete", "firmware_vendor",
                "firmware_version", "product", "fidelity")


def reasons(efi: bool | None, efi_debug: bool | None, kexec: bool | None,
            log_complete: bool | None) -> tuple[str, ...]:
    """Why a boot may not measure some figures (unknown states are no reason)."""
    out = []
    if efi is False:
        out.append("not_efi")
    if efi_debug:
        out.append("efi_debug")
    if kexec:
        out.append("kexec")
    if log_complete is False:
        out.append("log_truncated")
    return tuple(out)


def measures(figure: str, why: tuple[str, ...]) -> bool:
    """Whether a boot with these reasons measures ``figure``."""
    return not LEFT_OUT_OF[figure].intersection(why)


def anomaly_codes(doc: LedgerDoc) -> str | None:
    """A ledger document's distinct anomaly codes, sorted and space-separated."""
    codes = sorted({a["code"] for a in doc["anomalies"]})
    return " ".join(codes) if codes else None


def boot_columns(doc: LedgerDoc) -> dict[str, Any]:
    """The boots columns of :data:`BOOT_COLUMNS` from a ledger document."""
    fw, fid = doc["firmware"], doc["fidelity"]
    dmi = fw["dmi"] or {}
    return {
        "efi": fw["efi"],
        "efi_debug": fid["efi_debug"],
        "kexec": doc["kernel"]["kexec"],
        "log_complete": fid["log_complete"],
        "firmware_vendor": fw["vendor"],
        "firmware_version": dmi.get("bios_version"),
        "product": dmi.get("product_name"),
        "fidelity": fid,
    }
