"""Parsers for /proc files: meminfo, zoneinfo, iomem, uptime, cmdline.

Pure functions on text, in the manner of prometheus_client's process collector; the
reader in :mod:`memledger.tracer.reader` supplies the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ("IomemEntry", "Zone", "parse_iomem", "parse_meminfo", "parse_uptime", "parse_zoneinfo")


@dataclass(frozen=True, slots=True)
class Zone:
    node: int
    name: str
    spanned: int
    present: int
    managed: int


@dataclass(frozen=True, slots=True)
class IomemEntry:
    start: int
    end: int  # exclusive
    name: str
    depth: int


_MEMINFO = re.compile(r"^(?P<k>[\w()]+):\s+(?P<v>\d+)(?:\s+(?P<u>kB))?\s*$")
_ZONE = re.compile(r"^Node (?P<node>\d+), zone\s+(?P<name>\S+)")
_ZONE_FIELD = re.compile(r"^\s+(?P<k>spanned|present|managed)\s+(?P<v>\d+)\s*$")
_IOMEM = re.compile(r"^(?P<indent> *)(?P<s>[0-9a-fA-F]+)-(?P<e>[0-9a-fA-F]+) : (?P<name>.*)$")


def parse_meminfo(text: str) -> dict[str, int]:
    """Field → value; ``kB`` values are converted to bytes."""
    out: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MEMINFO.match(line)
        if m is None:
            raise ValueError(f"line {lineno}: not a meminfo line: {line[:80]!r}")
        value = int(m.group("v"))
        out[m.group("k")] = value * 1024 if m.group("u") else value
    return out


# /proc/uptime: "SECONDS IDLE", each with two decimals (fs/proc/uptime.c). The first is
# CLOCK_BOOTTIME: it starts at the boot and only grows, whatever the wall clock does.
# Ten digits are 317 years: more is not an uptime.
_UPTIME = re.compile(r"\A(\d{1,10})\.(\d{2}) \d{1,15}\.\d{2}\n?\Z")


def parse_uptime(text: str) -> float:
    """The seconds since boot in /proc/uptime."""
    m = _UPTIME.match(text)
    if m is None:
        raise ValueError(f"line 1: not an uptime line: {text[:80]!r}")
    return int(m.group(1)) + int(m.group(2)) / 100


def parse_zoneinfo(text: str) -> list[Zone]:
    zones: list[Zone] = []
    current: tuple[int, str] | None = None
    fields: dict[str, int] = {}

    def flush() -> None:
        if current is not None and {"spanned", "present", "managed"} <= fields.keys():
            zones.append(Zone(current[0], current[1], fields["spanned"], fields["present"],
                              fields["managed"]))

    for line in text.splitlines():
        z = _ZONE.match(line)
        if z is not None:
            flush()
            current, fields = (int(z.group("node")), z.group("name")), {}
            continue
        f = _ZONE_FIELD.match(line)
        if f is not None and current is not None and f.group("k") not in fields:
            fields[f.group("k")] = int(f.group("v"))
    flush()
    if text.strip() and not zones:
        raise ValueError("no zones found")
    return zones


def parse_iomem(text: str) -> list[IomemEntry]:
    """Entries of /proc/iomem. Non-root readers see every address as zero."""
    out: list[IomemEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _IOMEM.match(line)
        if m is None:
            raise ValueError(f"line {lineno}: not an iomem line: {line[:80]!r}")
        out.append(IomemEntry(int(m.group("s"), 16), int(m.group("e"), 16) + 1,
                              m.group("name").strip(), len(m.group("indent")) // 2))
    return out
