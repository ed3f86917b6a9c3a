"""Parsers for /sys/firmware/memmap and DMI identity files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from memledger.tracer.e820 import normalize_type

__all__ = ("DMI_FIELDS", "HARDWARE_FIELDS", "FirmwareMapEntry", "hardware_digest",
           "parse_firmware_memmap_entry")

DMI_FIELDS = ("sys_vendor", "product_name", "board_name", "bios_vendor", "bios_version",
              "bios_date")
# What tells one machine from another of the same model (and from a clone of its disk
# image): readable by root only (mode 0400), so a capture taken as another user lacks them.
HARDWARE_FIELDS = ("product_uuid", "product_serial")
# Values firmware leaves when nobody set them: they tell no machine apart. The UUID
# 03000200-0400-0500-0006-000700080009 is an AMI BIOS placeholder seen on many boards.
_PLACEHOLDERS = frozenset((
    "", "0", "none", "n/a", "na", "default string", "not specified", "not settable",
    "not applicable", "not available", "to be filled by o.e.m.", "system serial number",
    "0123456789", "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff", "03000200-0400-0500-0006-000700080009",
))


def hardware_digest(values: dict[str, str]) -> str:
    """A short digest of the machine's DMI product UUID and serial (``values``: file name →
    text), or '' when neither tells a machine apart: a host's key in the store (the capture
    file itself holds the values, as it holds the other DMI strings)."""
    parts = [f"{f}={v}" for f in HARDWARE_FIELDS
             if (v := values.get(f, "").strip()).lower() not in _PLACEHOLDERS]
    if not parts:
        return ""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


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
