"""memblock: ``memblock=debug`` log lines and the debugfs region tables.

Log lines come from ``memblock_dbg()`` (mm/memblock.c, KERN_INFO, no prefix)::

    memblock_reserve: [0x0000000000087000-0x0000000000087fff] efi_reserve_boot_services+0xaa/0xf0
    __memblock_reserve: [0x…-0x…] nid=-1 flags=0 reserve_real_mode+0x…/0x…   (v6.16+, KHO)
    __memblock_free_late: [0x…-0x…] efi_free_boot_services+0x…/0x…          (≤ v5.15)
    memblock_phys_alloc_range: 28672 bytes align=0x1000 from=0x… max_addr=0x… caller+…

From v6.16 (the KHO series, MEMBLOCK_RSRV_KERN) memblock_reserve() is an inline wrapper
and ``__memblock_reserve`` prints ``nid=`` and ``flags=`` (0x20 = RSRV_KERN). The function
was renamed from ``__memblock_free_late`` to ``memblock_free_late`` around v5.16. Ends are
inclusive in the text; the records here are half-open.

debugfs (/sys/kernel/debug/memblock/{memory,reserved}, only with ARCH_KEEP_MEMBLOCK)::

       0: 0x0000000080000000..0x00000000901fffff                 (≤ v6.4)
       3: 0x0000000000100000..0x000000003fffffff    0 NONE       (v6.5+, 493f349e38d0)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = (
    "ALLOC_MARK",
    "MEMBLOCK_RSRV_KERN",
    "MemblockAlloc",
    "MemblockEvent",
    "MemblockRegion",
    "caller_function",
    "parse_debugfs",
    "parse_line",
    "parse_range",
    "parse_ranges",
    "whole_pages_bytes",
)

MEMBLOCK_RSRV_KERN = 0x20  # v6.16, "memblock: add MEMBLOCK_RSRV_KERN flag"

# Function names are matched as [a-z0-9_] rather than \w, and 0x outside the groups: the
# same lines, twice as fast (a memblock=debug boot has 10⁵ of them).
# Between the range and the caller, v6.16+ prints " nid=%d flags=%x"; any other
# "key=value" a later kernel adds is read past, so the range is never lost to it.
_RANGE = re.compile(
    r"(_{0,2}memblock_[a-z0-9_]+): \[0x([0-9a-fA-F]+)-0x([0-9a-fA-F]+)\]"
    r"((?: [a-z_]+=\S*)*)(?: ([^\s=]+))?\s*$"
)
# What every range line starts with: a line like this that _RANGE does not read is
# reported, not dropped.
_RANGE_START = re.compile(r"_{0,2}memblock_[a-z0-9_]+: \[0x")
_ALLOC = re.compile(
    r"^(?P<fn>_{0,2}memblock_\w+): (?P<size>\d+) bytes align=(?P<align>0x[0-9a-fA-F]+)"
    r"(?: nid=(?P<nid>-?\d+))? from=(?P<frm>0x[0-9a-fA-F]+) max_addr=(?P<max>0x[0-9a-fA-F]+)"
    r"(?: (?P<caller>\S+))?\s*$"
)
_DEBUGFS = re.compile(
    r"^\s*(?P<idx>\d+): (?P<s>0x[0-9a-fA-F]+)\.\.(?P<e>0x[0-9a-fA-F]+)"
    r"(?:\s+(?P<nid>\d+|x)\s+(?P<flag>\S+))?\s*$"
)


@dataclass(slots=True)
class MemblockEvent:
    """A range operation: reserve, add, remove, phys_free, free_late, …

    Not frozen: a memblock=debug boot has 10⁵ of these, and a frozen dataclass's
    ``__init__`` costs three times as much. Nothing mutates them."""

    op: str  # the function name without leading underscores and "memblock_"
    start: int
    end: int
    caller: str | None
    nid: int | None = None
    flags: int | None = None

    @property
    def caller_fn(self) -> str | None:
        return caller_function(self.caller)


@dataclass(frozen=True, slots=True)
class MemblockAlloc:
    op: str
    size: int
    caller: str | None


@dataclass(frozen=True, slots=True)
class MemblockRegion:
    index: int
    start: int
    end: int
    nid: int | None
    flag: str | None


PAGE_SIZE = 4096


def whole_pages_bytes(start: int, end: int) -> int:
    """Bytes memblock_free_late() really frees of ``[start, end)``.

    It walks PFN_UP(base) … PFN_DOWN(base + size), so only whole pages count.
    """
    return max(0, end // PAGE_SIZE - -(-start // PAGE_SIZE)) * PAGE_SIZE


@lru_cache(maxsize=4096)  # a boot has 10⁵ reservations from a few hundred call sites
def caller_function(caller: str | None) -> str | None:
    """``efi_reserve_boot_services+0xaa/0xf0`` → ``efi_reserve_boot_services``.

    Compiler suffixes (``.constprop.0``, ``.isra.0``, ``.part.0``) are dropped.
    """
    if not caller:
        return None
    name = caller.split("+", 1)[0]
    return name.split(".", 1)[0]


def _op(fn: str) -> str:
    op = _OPS.get(fn)
    if op is None:
        name = fn.lstrip("_")
        op = _OPS[fn] = name[len("memblock_"):] if name.startswith("memblock_") else name
    return op


# Function name → op ("__memblock_free_late" → "free_late"); a handful of names per kernel.
_OPS: dict[str, str] = {}
# memblock_dbg()'s allocation lines ("%s: %llu bytes align=0x%llx nid=%d from=%pa …").
ALLOC_MARK = " bytes align="


def _event(m: re.Match[str], msg: str) -> MemblockEvent:
    fn, s, e, keys, caller = m.groups()
    start, last = int(s, 16), int(e, 16)
    if last < start:
        raise ValueError(f"memblock range ends before it starts: {msg!r}")
    nid = flags = None
    if keys:
        fields = dict(kv.partition("=")[::2] for kv in keys.split())
        try:
            nid = int(fields["nid"]) if "nid" in fields else None
            flags = int(fields["flags"], 16) if "flags" in fields else None
        except ValueError:
            raise ValueError(f"memblock nid or flags is not a number: {msg!r}") from None
    return MemblockEvent(_OPS.get(fn) or _op(fn), start, last + 1, caller, nid, flags)


def parse_range(msg: str) -> MemblockEvent | None:
    """A ``memblock=debug`` range line (``fn: [%pa-%pa] …``), or None."""
    m = _RANGE.match(msg)
    return None if m is None else _event(m, msg)


def parse_ranges(msgs: list[str]) -> tuple[list[tuple[int, MemblockEvent]], list[tuple[int, str]]]:
    """:func:`parse_range` over many lines at once (a memblock=debug boot has 10⁵):
    the events with their position in ``msgs``, and the lines that are wrong, with why.
    Lines that are not range lines are left out."""
    events: list[tuple[int, MemblockEvent]] = []
    bad: list[tuple[int, str]] = []
    for pos, m in enumerate(map(_RANGE.match, msgs)):
        if m is not None:
            try:
                events.append((pos, _event(m, msgs[pos])))
            except ValueError as exc:
                bad.append((pos, str(exc)))
        elif _RANGE_START.match(msgs[pos]):
            bad.append((pos, f"memblock range line in a format this memledger does not read: "
                             f"{msgs[pos][:120]!r}"))
    return events, bad


def parse_line(msg: str) -> MemblockEvent | MemblockAlloc | None:
    """One ``memblock=debug`` line, or None."""
    if ALLOC_MARK not in msg:
        return parse_range(msg)
    a = _ALLOC.match(msg)
    if a is not None:
        return MemblockAlloc(_op(a.group("fn")), int(a.group("size")), a.group("caller"))
    return None


def parse_debugfs(text: str) -> list[MemblockRegion]:
    """/sys/kernel/debug/memblock/{memory,reserved} in either format."""
    out: list[MemblockRegion] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _DEBUGFS.match(line)
        if m is None:
            raise ValueError(f"line {lineno}: not a memblock region: {line[:80]!r}")
        nid = m.group("nid")
        out.append(MemblockRegion(int(m.group("idx")), int(m.group("s"), 16),
                                  int(m.group("e"), 16) + 1,
                                  int(nid) if nid not in (None, "x") else None,
                                  m.group("flag")))
    return out
