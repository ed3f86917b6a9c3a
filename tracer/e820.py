"""E820 lines of the kernel log, in both eras of their format.

v6.1 … v6.19 (arch/x86/kernel/e820.c)::

    BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
    e820: update [mem 0x00000000-0x00000fff] usable ==> reserved
    e820: remove [mem 0x000a0000-0x000fffff] usable

v7.0+ (merge 5668a64622cf, "x86-boot-2026-02-09"): types gain a leading space and new
names ("System RAM", "device reserved"), and gaps are printed::

    BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff]  System RAM
    BIOS-e820: [gap 0x00000000d0000000-0x00000000efffffff]

Ends are inclusive in the text; the records here are half-open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ("E820Change", "E820Entry", "normalize_type", "parse_change", "parse_entry")

# who: e820__print_table() callers; "reserve setup_data" is v6.1 … v6.14 only (removed with
# E820_TYPE_RESERVED_KERN by Mike Rapoport's "x86/e820: drop E820_TYPE_RESERVED_KERN").
_ENTRY = re.compile(
    r"^(?P<who>BIOS-e820|reserve setup_data|user|modified|extended): "
    r"\[(?P<kind>mem|gap) (?P<s>0x[0-9a-fA-F]+)-(?P<e>0x[0-9a-fA-F]+)\]\s*(?P<type>.*?)\s*$"
)
_CHANGE = re.compile(
    r"^e820: (?P<op>update|remove) \[mem (?P<s>0x[0-9a-fA-F]+)-(?P<e>0x[0-9a-fA-F]+)\]"
    r"\s*(?P<old>.*?)(?:\s*==>\s*(?P<new>.*?))?\s*$"
)
# Old (≤ v6.19) and new (v7.0+, 5668a64622cf) names, and the /sys/firmware/memmap names
# (e820_type_to_string), all mapped to one vocabulary.
_TYPES = {
    "usable": "ram",
    "system ram": "ram",
    "reserved": "reserved",
    "device reserved": "reserved",
    "soft reserved": "soft_reserved",
    "acpi data": "acpi",
    "acpi tables": "acpi",
    "acpi nvs": "nvs",
    "acpi non-volatile storage": "nvs",
    "unusable": "unusable",
    "unusable memory": "unusable",
    "persistent memory": "pmem",
    "persistent memory (legacy)": "pmem",
}


def normalize_type(text: str) -> str:
    """Map an E820 type name of any era to ``ram``, ``reserved``, ``acpi``, … ."""
    key = text.strip().lower()
    if key in _TYPES:
        return _TYPES[key]
    if key.startswith("persistent"):
        return "pmem"
    return "other" if key else "unknown"


@dataclass(frozen=True, slots=True)
class E820Entry:
    who: str
    start: int
    end: int
    type: str
    raw_type: str


@dataclass(frozen=True, slots=True)
class E820Change:
    op: str  # "update" or "remove"
    start: int
    end: int
    old: str
    new: str | None


def parse_entry(msg: str) -> E820Entry | None:
    """An ``e820__print_table`` row, or None. Gap rows (v7.0+) return None."""
    m = _ENTRY.match(msg)
    if m is None or m.group("kind") == "gap":
        return None
    start, last = int(m.group("s"), 16), int(m.group("e"), 16)
    if last < start:
        raise ValueError(f"E820 range ends before it starts: {msg!r}")
    raw = m.group("type")
    return E820Entry(m.group("who"), start, last + 1, normalize_type(raw), raw)


def parse_change(msg: str) -> E820Change | None:
    """An ``e820: update``/``e820: remove`` line, or None."""
    m = _CHANGE.match(msg)
    if m is None:
        return None
    start, last = int(m.group("s"), 16), int(m.group("e"), 16)
    if last < start:
        raise ValueError(f"E820 range ends before it starts: {msg!r}")
    new = m.group("new")
    return E820Change(m.group("op"), start, last + 1, normalize_type(m.group("old")),
                      normalize_type(new) if new is not None else None)
