"""The ledger document: one boot's account as JSON, typed field by field.

These are the shapes :meth:`memledger.ledger.compute.Ledger.as_dict` returns, ingest stores
and the exporters read back (docs/ledger.md documents every field). Unknown is
None (JSON null), never 0. A document stored by an older memledger lacks the keys added
since; :func:`from_stored` gives it them, as unknown, where stored documents are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, cast

__all__ = (
    "SCHEMA_VERSION",
    "AnomalyDoc",
    "BootDoc",
    "BootServicesDoc",
    "FidelityDoc",
    "FirmwareDoc",
    "KernelAccountingDoc",
    "KernelDoc",
    "LedgerDoc",
    "LowMemoryDoc",
    "from_stored",
)

SCHEMA_VERSION = 1


class BootDoc(TypedDict):
    index: int | None  # this boot's place among the boots of a multi-boot log (0-based)
    of: int | None  # how many boots that log holds
    boot_id: str | None
    machine_id: str | None
    source: str | None  # the file or tree the evidence came from


class KernelDoc(TypedDict):
    release: str | None
    cmdline: str | None
    cmdline_source: str | None  # "proc" or "log"
    cmdline_truncated: bool | None
    kdump: bool | None  # a kdump capture kernel (elfcorehdr= on its command line)
    kexec: bool | None  # started by kexec (boot_params type_of_loader, or kdump)
    loader: str | None
    type_of_loader: int | None


class FirmwareDoc(TypedDict):
    efi: bool | None  # False: a BIOS boot, where no EFI figure applies
    vendor: str | None  # one name per vendor (memledger.ledger.vendors)
    efi_version: str | None
    efi_vendor: str | None  # as the kernel log printed it
    dmi: dict[str, str] | None  # /sys/class/dmi/id, file name → value
    dmi_line: str | None  # the log's "DMI:" line


class BootServicesDoc(TypedDict):
    total_bytes: int | None
    reclaimed_bytes: int | None
    kept_bytes: int | None
    kept_by_reason: dict[str, int | None] | None  # keys: boot_services.KEPT_REASONS
    leaked_bytes: int | None
    runtime_by_cause: dict[str, int] | None
    total_source: str | None
    reclaimed_source: str | None
    regions: int | None
    cross_checks: dict[str, int | None]


class LowMemoryDoc(TypedDict):
    usable_bytes: int | None
    reserved_bytes: int | None
    boot_services_bytes: int | None
    freed_bytes: int | None
    crashkernel_low_bytes: int | None
    crashkernel_bytes: int | None
    reserved_source: str | None
    freed_source: str | None


class KernelAccountingDoc(TypedDict):
    boot_reserved_bytes: int | None
    freed_by_name: dict[str, int]
    freed_after_memory_line_bytes: int | None
    present_bytes: int | None
    managed_bytes: int | None
    memtotal_bytes: int | None
    unmanaged_totalram_bytes: int | None
    residual_bytes: int | None
    silent_freed_bytes: int | None
    silent_freed_by_caller: dict[str, int]
    unexplained_residual_bytes: int | None
    trace_freed_by_name: dict[str, int] | None
    lazy_deferred_init: bool
    lazy_left_at_boot_bytes: int | None
    lazy_uninitialised_bytes: int | None


class FidelityDoc(TypedDict):
    sources: dict[str, bool]  # which inputs this boot had (kernel_log, proc_meminfo, …)
    unreadable: list[str]
    log_format: str | None
    log_complete: bool | None
    log_lines: list[int] | None  # [first, last] line of this boot in its file
    efi_debug: bool
    memblock_debug: bool
    efi_memmap_printed: bool
    boot_trace: bool
    trace_overflowed: bool | None
    problems: list[str]
    notes: list[str]


class AnomalyDoc(TypedDict):
    code: str  # one of memledger.ledger.anomalies.CODES
    severity: str  # "info", "warning" or "error"
    message: str
    evidence: str


class LedgerDoc(TypedDict):
    schema_version: int
    boot: BootDoc
    kernel: KernelDoc
    firmware: FirmwareDoc
    efi_boot_services: BootServicesDoc
    low_memory: LowMemoryDoc
    kernel_accounting: KernelAccountingDoc
    fidelity: FidelityDoc
    anomalies: list[AnomalyDoc]


# Keys added to schema 1 after documents were first stored, by part. An older document
# cannot say them: they are unknown (None) there.
_ADDED: dict[str, tuple[str, ...]] = {
    "kernel": ("loader", "type_of_loader",  # boot_params (kexec boots), 2026-11-22
               "kdump",  # elfcorehdr= on the command line, 2026-11-30
               "kexec"),  # 2026-11-30
    "firmware": ("vendor",),  # one name per vendor, 2026-11-30
}


def from_stored(document: Mapping[str, Any]) -> LedgerDoc:
    """A stored ledger document with every key of today's shape (missing ones None)."""
    if all(key in document[part] for part, keys in _ADDED.items() for key in keys):
        return cast(LedgerDoc, document)
    out = dict(document)
    for part, keys in _ADDED.items():
        out[part] = {**dict.fromkeys(keys), **document[part]}
    return cast(LedgerDoc, out)
