"""The EFI memory map: the EFI_DBG dump in the kernel log, and /sys/firmware/efi/runtime-map.

``efi_print_memmap()`` prints, when EFI_DBG is set (and again after the switch to virtual
mode, under an ``EFI runtime memory map:`` header)::

    efi: mem08: [Boot Data   |   |  |  |  |  |  |  |  |  |  |   |WB|WT|WC|UC] range=[0x0000000000900000-0x00000000014fffff] (12MB)

The attribute column has 14 fields up to ba69e0750b03 ("efi: Avoid cold plugged memory
for placing the kernel", ~v6.13) and 15 after it (``HP`` after ``RUN``); Debian's
6.1.0-47 already has the backport. An unknown attribute bit prints ``|attr=0x…]``
instead. Before v5.10 (EFI_MEMORY_CPU_CRYPTO) the type names were longer ("Conventional
Memory"). The parser therefore splits on ``|`` and reads tokens by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = (
    "BOOT_SERVICES_TYPES",
    "EFI_MEMORY_RUNTIME",
    "EfiMemDesc",
    "RuntimeMapEntry",
    "parse_memmap_line",
    "parse_runtime_map_entry",
)

EFI_MEMORY_RUNTIME = 1 << 63
EFI_PAGE_SIZE = 4096
# EFI_MEMORY_TYPE values (UEFI spec): 3 = EfiBootServicesCode, 4 = EfiBootServicesData.
BOOT_SERVICES_TYPES = frozenset({3, 4})

_NAMES = {
    # v5.10+ short names (char memory_type_name[][13])
    "reserved": 0, "loader code": 1, "loader data": 2, "boot code": 3, "boot data": 4,
    "runtime code": 5, "runtime data": 6, "conventional": 7, "unusable": 8,
    "acpi reclaim": 9, "acpi mem nvs": 10, "mmio": 11, "mmio port": 12, "pal code": 13,
    "persistent": 14,
    # older long names (before "efi: add definition of EFI_MEMORY_CPU_CRYPTO", ~v5.10)
    "conventional memory": 7, "unusable memory": 8, "acpi memory nvs": 10,
    "memory mapped i/o": 11, "mmio port space": 12, "persistent memory": 14,
}
_LINE = re.compile(
    r"^efi: mem(?P<idx>\d+): \[(?P<body>[^\]]*)\] range=\[(?P<s>0x[0-9a-fA-F]+)-"
    r"(?P<e>0x[0-9a-fA-F]+)\]"
)
# Up to v3.17, before the type and attribute names, a row gave numbers and an exclusive end:
# "efi: mem00: type=3, attr=0xf, range=[0x0000000000000000-0x0000000000001000) (0MB)".
_OLD_LINE = re.compile(
    r"^efi: mem(?P<idx>\d+): type=(?P<type>\d+), attr=(?P<attr>0x[0-9a-fA-F]+), "
    r"range=\[(?P<s>0x[0-9a-fA-F]+)-(?P<e>0x[0-9a-fA-F]+)\)"
)
# EFI_MEMORY_* attribute bits (UEFI spec) under the names the newer rows print.
_ATTR_BITS = {0x1: "UC", 0x2: "WC", 0x4: "WT", 0x8: "WB", 0x10: "UCE", 0x1000: "WP",
              0x2000: "RP", 0x4000: "XP", 0x8000: "NV", 0x10000: "MR", 0x20000: "RO",
              0x40000: "SP", 0x80000: "CC", EFI_MEMORY_RUNTIME: "RUN"}


@dataclass(frozen=True, slots=True)
class EfiMemDesc:
    index: int
    type: int  # EFI_MEMORY_TYPE; -1 when the name was not recognised
    type_name: str
    attrs: frozenset[str]
    start: int
    end: int

    @property
    def boot_services(self) -> bool:
        return self.type in BOOT_SERVICES_TYPES

    @property
    def runtime(self) -> bool:
        return "RUN" in self.attrs


@dataclass(frozen=True, slots=True)
class RuntimeMapEntry:
    """One /sys/firmware/efi/runtime-map/N directory (root-only files)."""

    index: int
    type: int
    start: int
    end: int
    attribute: int

    @property
    def boot_services(self) -> bool:
        return self.type in BOOT_SERVICES_TYPES


def _type_of(name: str) -> int:
    key = name.strip().lower()
    if key.startswith("type="):
        return int(key[5:])
    return _NAMES.get(key, -1)


def parse_memmap_line(msg: str) -> EfiMemDesc | None:
    """One ``efi: memNN:`` row, or None when ``msg`` is not one."""
    m = _LINE.match(msg)
    if m is None:
        return _parse_old_line(msg)
    name, _, rest = m.group("body").partition("|")
    attrs = frozenset(t.strip() for t in rest.split("|") if t.strip())
    start, last = int(m.group("s"), 16), int(m.group("e"), 16)
    # A descriptor of zero pages (firmware does print them) ends one byte before it starts.
    if last + 1 < start:
        raise ValueError(f"EFI range ends before it starts: {msg!r}")
    return EfiMemDesc(int(m.group("idx")), _type_of(name), name.strip(), attrs, start,
                      last + 1)


def _parse_old_line(msg: str) -> EfiMemDesc | None:
    m = _OLD_LINE.match(msg)
    if m is None:
        return None
    attr = int(m.group("attr"), 16)
    attrs = frozenset(name for bit, name in _ATTR_BITS.items() if attr & bit)
    start, end = int(m.group("s"), 16), int(m.group("e"), 16)
    if end < start:
        raise ValueError(f"EFI range ends before it starts: {msg!r}")
    kind = int(m.group("type"))
    return EfiMemDesc(int(m.group("idx")), kind, f"type={kind}", attrs, start, end)


def parse_runtime_map_entry(index: int, fields: dict[str, str]) -> RuntimeMapEntry:
    """From the ``type``, ``phys_addr``, ``num_pages`` and ``attribute`` files (hex)."""
    try:
        start = int(fields["phys_addr"].strip(), 16)
        pages = int(fields["num_pages"].strip(), 16)
        return RuntimeMapEntry(index, int(fields["type"].strip(), 16), start,
                               start + pages * EFI_PAGE_SIZE,
                               int(fields["attribute"].strip(), 16))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"runtime-map/{index}: {exc}") from None
