"""Parsers for /sys/firmware/memmap and DMI identity files."""

from __future__ import annotations

from dataclasses import dataclass

from memledger.tracer.e820 import normalize_type

__all__ = ("DMI_FIELDS", "FirmwareMapEntry", "parse_firmware_memmap_entry")

DMI_FIELDS = ("sys_vendor", "product_name", "board_name", "bios_vendor", "bios_version",
              "bios_date")


@dataclass(frozen=True, slots=True)
class FirmwareMapEntry:
    """/sys/firmware/memmap/N: the firmware E820 table before kernel changes."""

    index: int
    start: int
    end: int  # exclusive; the ``end`` file is inclusive
    type: str
    raw_type: str


def parse_firmware_memmap_entry(index: int, start: str, end: str, type_: str) -> FirmwareMapEntry:
    try:
        s, e = int(start.strip(), 16), int(end.strip(), 16)
    except ValueError:
        raise ValueError(f"memmap/{index}: start/end are not hex numbers") from None
    if e < s:
        raise ValueError(f"memmap/{index}: end {e:#x} is before start {s:#x}")
    return FirmwareMapEntry(index, s, e + 1, normalize_type(type_), type_.strip())
