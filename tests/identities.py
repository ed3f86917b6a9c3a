"""Identities every real boot must satisfy, checked against the kernel's own output.

A boot folder (``memledger lab boot --out``) holds root/ (dmesg.txt, proc/, sys/),
cmdline.txt and lab.json. The helpers here read those raw files with plain regular
expressions of their own, never memledger's parsers, so that what the kernel printed is
the oracle; the checks then compare memledger's ledger with it. They are shared by the
fast tests on committed boots (tests/test_boots.py) and the live QEMU matrix
(tests/e2e/).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SZ_1M = 1 << 20
PAGE = 4096

_TS = r"^\[\s*\d+\.\d+\] "
FREEING = re.compile(_TS + r"(?:efi: )?Freeing (?P<name>.+?) memory: ?(?P<k>\d+)K\s*$", re.M)
MEMORY = re.compile(_TS + r"Memory: \d+K/\d+K available \(.*?(?P<reserved>\d+)K reserved", re.M)
MEMMAP_BS = re.compile(r"efi: mem\d+: \[Boot (?:Code|Data)\s*\|[^\]]*\] "
                       r"range=\[0x(?P<s>[0-9a-f]+)-0x(?P<e>[0-9a-f]+)\]")
# v6.16+ prints "nid=-1 flags=0" before the caller; v5.10 names "__memblock_free_late".
_MB_TAIL = r"\] (?:nid=\S+ flags=\S+ )?(?P<caller>\S+)"
MB_RESERVE = re.compile(r"memblock_reserve: \[0x(?P<s>[0-9a-f]+)-0x(?P<e>[0-9a-f]+)" + _MB_TAIL)
MB_FREE_LATE = re.compile(r"memblock_free_late: \[0x(?P<s>[0-9a-f]+)-0x(?P<e>[0-9a-f]+)" + _MB_TAIL)
# v7.0 names the E820 types "System RAM" and "device reserved".
E820_UPDATE = re.compile(r"e820: update \[mem 0x(?P<s>[0-9a-f]+)-0x(?P<e>[0-9a-f]+)\] "
                         r"(?:usable|System RAM) ==> (?:reserved|device reserved)")
MEMTOTAL = re.compile(r"^MemTotal:\s+(?P<k>\d+) kB", re.M)
ZONE_FIELD = re.compile(r"^\s+(?P<k>present|managed)\s+(?P<v>\d+)\s*$", re.M)
KPROBE_ENTRY = re.compile(r"-(?P<pid>\d+)\s+\[\d+\].*?\d+\.\d+: free_reserved_area: \(free_reserved_area\+"
                          r".*?start=0x(?P<s>[0-9a-f]+) end=0x(?P<e>[0-9a-f]+).*? s=(?P<name>\"[^\"]*\"|\(fault\))"
                          r"(?: base=0x(?P<base>[0-9a-f]+))?")
KPROBE_RET = re.compile(r"-(?P<pid>\d+)\s+\[\d+\].*?\d+\.\d+: free_reserved_area_ret: \((?P<caller>[\w.]+)\+"
                        r".*? <- free_reserved_area\) pages=(?P<pages>\d+)")


@dataclass
class Boot:
    """The raw facts of one boot folder."""

    folder: Path
    dmesg: str
    cmdline: list[str]
    lab: dict[str, Any]
    trace: str | None
    zoneinfo: str | None
    meminfo: str | None
    freeing: list[tuple[int, str, int]] = field(default_factory=list)  # (offset, name, bytes)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def efi_firmware(self) -> bool:
        return self.lab.get("firmware", "ovmf") == "ovmf"

    @property
    def release(self) -> tuple[int, int]:
        """(major, minor) of the kernel that printed the log."""
        m = re.search(r"Linux version (\d+)\.(\d+)", self.dmesg)
        assert m is not None, "every lab boot's log starts at its banner"
        return int(m.group(1)), int(m.group(2))

    @property
    def efi_free_late_seen(self) -> bool:
        return bool(efi_free_late(self.dmesg))

    def has_arg(self, arg: str) -> bool:
        return arg in self.cmdline

    def freed(self, name: str) -> int | None:
        found = [b for _, n, b in self.freeing if n == name]
        return sum(found) if found else None


def load_boot(folder: Path) -> Boot:
    root = folder / "root"
    dmesg = (root / "dmesg.txt").read_text(errors="replace")
    trace_file = root / "sys" / "kernel" / "tracing" / "trace"
    zone_file = root / "proc" / "zoneinfo"
    meminfo_file = root / "proc" / "meminfo"
    lab_file = folder / "lab.json"
    boot = Boot(folder=folder, dmesg=dmesg, cmdline=(folder / "cmdline.txt").read_text().split(),
                lab=json.loads(lab_file.read_text()) if lab_file.exists() else {},
                trace=trace_file.read_text(errors="replace") if trace_file.exists() else None,
                zoneinfo=zone_file.read_text() if zone_file.exists() else None,
                meminfo=meminfo_file.read_text() if meminfo_file.exists() else None)
    boot.freeing = [(m.start(), m.group("name"), int(m.group("k")) * 1024) for m in FREEING.finditer(dmesg)]
    return boot


def _ranges(pattern: re.Pattern[str], text: str, caller: str | None = None) -> list[tuple[int, int]]:
    """[start, end) byte ranges (the kernel prints inclusive ends)."""
    out = []
    for m in pattern.finditer(text):
        if caller is not None and not m.group("caller").startswith(caller + "+"):
            continue
        out.append((int(m.group("s"), 16), int(m.group("e"), 16) + 1))
    return out


def _size(ranges: list[tuple[int, int]]) -> int:
    return sum(e - s for s, e in ranges)


def _above_1m(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(max(s, SZ_1M), e) for s, e in ranges if e > SZ_1M]


def _overlaps(r: tuple[int, int], others: list[tuple[int, int]]) -> bool:
    return any(s < r[1] and r[0] < e for s, e in others)


# Which identities must run for a configuration (more may).
EXPECTED = {
    "default": {"reclaimed", "below_1m", "residual", "leak"},
    "memblock": {"reclaimed", "below_1m", "residual", "leak"},
    "efidebug": {"reclaimed", "below_1m", "residual", "leak", "efi_debug", "memmap_vs_memblock"},
    "crashkernel": {"reclaimed", "below_1m", "residual", "leak", "crashkernel"},
    "mem8g": {"reclaimed", "below_1m", "residual", "leak"},
    "trace": {"reclaimed", "below_1m", "residual", "leak", "trace"},
    "seabios": {"reclaimed", "below_1m", "residual"},
}


def unmanaged_totalram(boot: Boot) -> int | None:
    """MemTotal - 4 KiB x Σ zone managed pages, from the kernel's own counters."""
    if boot.meminfo is None or boot.zoneinfo is None:
        return None
    m = MEMTOTAL.search(boot.meminfo)
    assert m is not None
    managed = sum(int(z.group("v")) for z in ZONE_FIELD.finditer(boot.zoneinfo) if z.group("k") == "managed")
    return int(m.group("k")) * 1024 - PAGE * managed


def efi_free_late(text: str) -> list[tuple[int, int]]:
    """The memblock_free_late ranges efi_free_boot_services printed (kernels before a4b0bf6a40f3)."""
    return _ranges(MB_FREE_LATE, text, "efi_free_boot_services")


def whole_pages(ranges: list[tuple[int, int]]) -> int:
    """Bytes of the whole pages inside each range (memblock_free_late frees PFN_UP..PFN_DOWN)."""
    return sum(max(0, (e // PAGE) - (-(-s // PAGE))) * PAGE for s, e in set(ranges))


# --- the identities -------------------------------------------------------------------

def check_reclaimed(boot: Boot, ledger: dict[str, Any]) -> None:
    """``reclaimed_bytes`` is the kernel's own ``efi: Freeing EFI boot services memory``."""
    bs = ledger["efi_boot_services"]
    line = boot.freed("EFI boot services")
    if not boot.efi_firmware:
        assert ledger["firmware"]["efi"] is False
        assert line is None
        assert all(bs[k] is None for k in ("total_bytes", "reclaimed_bytes", "kept_bytes", "leaked_bytes"))
        return
    assert ledger["firmware"]["efi"] is True
    if boot.has_arg("efi=debug"):
        assert line is None, "efi=debug keeps every region: the kernel must not print a Freeing line"
        return
    if line is None and boot.release < (6, 0):
        # Before a4b0bf6a40f3 ("x86/efi: defer freeing of boot services memory", v7.0,
        # backported to Debian's 6.1 and 6.12) no summary line is printed: memblock=debug
        # shows each region's memblock_free_late, and without it the free is unknown.
        late = efi_free_late(boot.dmesg)
        if not late:
            assert not boot.has_arg("memblock=debug")
            assert bs["reclaimed_bytes"] is None and bs["kept_bytes"] is None
            assert "reclaim_unknown" in {a["code"] for a in ledger["anomalies"]}
            return
        assert bs["reclaimed_bytes"] == whole_pages(late)
        assert bs["reclaimed_source"] == "memblock_free_late"
    else:
        assert line is not None and line > 0, "an OVMF boot without efi=debug prints its EFI free"
        assert bs["reclaimed_bytes"] == line
        assert bs["reclaimed_source"] == "kernel_log"
    if bs["total_bytes"] is not None:
        assert bs["total_bytes"] == bs["reclaimed_bytes"] + bs["kept_bytes"]
        assert sum(bs["kept_by_reason"].values()) == bs["kept_bytes"]
        assert bs["kept_by_reason"]["unexplained"] == 0


def check_leak(boot: Boot, ledger: dict[str, Any]) -> None:
    """``leaked_bytes`` is MemTotal - Σ managed; 0 on a kernel that prints its EFI free
    (a4b0bf6a40f3 frees with free_reserved_area after deferred init)."""
    leaked = ledger["efi_boot_services"]["leaked_bytes"]
    assert leaked == unmanaged_totalram(boot)
    if boot.freed("EFI boot services") is not None or boot.has_arg("efi=debug"):
        assert leaked == 0


def check_memmap_vs_memblock(boot: Boot, ledger: dict[str, Any]) -> bool:
    """Where both the firmware map (efi=debug) and memblock=debug are printed, they agree
    on the part above 1 MiB: efi_reserve_boot_services reserves each boot-services region
    whole, except the regions something reserved earlier (those stay with the firmware).

    Returns False when the boot does not print both.
    """
    # The first dump only: efi=debug prints the map again after efi_mem_reserve split it.
    first_dump = boot.dmesg.find("efi: mem00:")
    second_dump = boot.dmesg.find("efi: mem00:", first_dump + 1)
    memmap = _ranges(MEMMAP_BS, boot.dmesg[:second_dump] if second_dump > 0 else boot.dmesg)
    first = boot.dmesg.find("efi_reserve_boot_services+")
    reserved = _ranges(MB_RESERVE, boot.dmesg, "efi_reserve_boot_services")
    if not memmap or not reserved:
        return False
    earlier = _ranges(MB_RESERVE, boot.dmesg[:first])
    # Each reserved range is exactly one firmware region.
    assert set(reserved) <= set(memmap)
    skipped = [r for r in memmap if r not in reserved]
    skipped_above = _above_1m(skipped)
    for r in skipped_above:
        assert _overlaps(r, earlier), f"region {r[0]:#x}-{r[1]:#x} neither reserved nor reserved earlier"
    assert _size(_above_1m(memmap)) - _size(skipped_above) == _size(_above_1m(reserved))
    cc = ledger["efi_boot_services"]["cross_checks"]
    assert cc["efi_memmap_bytes"] == _size(memmap)
    assert cc["memblock_reserved_bytes"] == _size(reserved)
    assert ledger["efi_boot_services"]["total_bytes"] == _size(memmap)
    return True


def check_efi_debug_keeps_all(boot: Boot, ledger: dict[str, Any]) -> None:
    bs = ledger["efi_boot_services"]
    assert boot.has_arg("efi=debug")
    assert boot.freed("EFI boot services") is None
    assert bs["reclaimed_bytes"] == 0
    assert bs["total_bytes"] is not None and bs["total_bytes"] > 0
    assert bs["kept_bytes"] == bs["total_bytes"]
    assert bs["kept_by_reason"]["efi_debug"] == bs["total_bytes"]
    assert "efi_debug_set" in {a["code"] for a in ledger["anomalies"]}


def check_nothing_below_1m_freed(boot: Boot, ledger: dict[str, Any]) -> None:
    low = ledger["low_memory"]
    if boot.release < (5, 13):
        # Before f1d4d47c5851 ("x86/setup: Always reserve the first 1M of RAM", v5.13)
        # efi_free_boot_services() frees boot-services memory below 1 MiB too.
        late_low = [(s, min(e, SZ_1M)) for s, e in efi_free_late(boot.dmesg) if s < SZ_1M]
        line = boot.freed("EFI boot services")
        if boot.has_arg("memblock=debug") and line is not None:
            # 5.10's backport of a4b0bf6a40f3 frees every region efi_reserve_boot_services
            # reserved, less the e820 updates efi_mem_reserve made inside them, and prints
            # the sum: the part of those reservations below 1 MiB is freed there.
            owned = _ranges(MB_RESERVE, boot.dmesg, "efi_reserve_boot_services")
            kept = [r for r in _ranges(E820_UPDATE, boot.dmesg) if _overlaps(r, owned)]
            assert _size(owned) - _size(kept) == line
            late_low = [(s, min(e, SZ_1M)) for s, e in owned if s < SZ_1M and not _overlaps((s, e), kept)]
        if boot.has_arg("memblock=debug"):
            assert low["freed_bytes"] == _size(late_low)
            if boot.efi_firmware and not boot.has_arg("efi=debug"):
                assert low["freed_bytes"] > 0
                codes = {(a["code"], a["severity"]) for a in ledger["anomalies"]}
                assert ("low_memory_freed", "info") in codes
        else:
            assert low["freed_bytes"] is None, "no range evidence and no v5.13 rule: unknown"
        assert (0, SZ_1M) not in _ranges(MB_RESERVE, boot.dmesg)
        return
    assert low["freed_bytes"] == 0
    if boot.has_arg("memblock=debug"):
        # f1d4d47c5851 (v5.13): setup_arch reserves all of the first 1 MiB.
        assert (0, SZ_1M) in _ranges(MB_RESERVE, boot.dmesg)
        assert low["reserved_source"] == "memblock"
        assert low["reserved_bytes"] == low["usable_bytes"]
        freed_low = [r for r in _ranges(MB_FREE_LATE, boot.dmesg) if r[0] < SZ_1M]
        assert freed_low == []
    for f in trace_frees(boot):
        if f["base"] is not None and f["start"] >= f["base"]:
            assert f["start"] - f["base"] >= SZ_1M, f"free_reserved_area below 1 MiB: {f}"


def kernel_residual(boot: Boot) -> int | None:
    """reserved at ``Memory:`` - (Σpresent - Σmanaged) - the frees printed after it, minus
    the whole pages memblock_free_late freed silently; 0 when the kernel's books balance."""
    m = MEMORY.search(boot.dmesg)
    if m is None or boot.zoneinfo is None:
        return None
    fields: dict[str, int] = {"present": 0, "managed": 0}
    for z in ZONE_FIELD.finditer(boot.zoneinfo):
        fields[z.group("k")] += int(z.group("v"))
    after = sum(b for off, _, b in boot.freeing if off > m.start())
    silent = whole_pages(_ranges(MB_FREE_LATE, boot.dmesg[m.start():]))
    if silent:
        # The pages memblock_free_late found still deferred never reached a zone.
        silent -= unmanaged_totalram(boot) or 0
    return int(m.group("reserved")) * 1024 - PAGE * (fields["present"] - fields["managed"]) - after - silent


def check_residual_explained(boot: Boot, ledger: dict[str, Any]) -> None:
    acc = ledger["kernel_accounting"]
    residual = kernel_residual(boot)
    if (boot.release < (6, 0) and boot.efi_firmware and not boot.efi_free_late_seen
            and not boot.has_arg("efi=debug") and boot.freed("EFI boot services") is None):
        # Before a4b0bf6a40f3, without memblock=debug, efi_free_boot_services frees without
        # a word: the residual is that free, unexplained, and said so.
        assert residual is not None and residual > 0
        assert acc["residual_bytes"] == residual
        assert ("accounting_residual", "warning") in {(a["code"], a["severity"]) for a in ledger["anomalies"]}
        return
    assert residual == 0, f"the kernel's own books do not balance: {residual} bytes"
    if acc["unexplained_residual_bytes"] is not None:
        assert acc["unexplained_residual_bytes"] == 0
    else:
        assert acc["residual_bytes"] == 0


def trace_frees(boot: Boot) -> list[dict[str, Any]]:
    """free_reserved_area kprobe entries paired with their kretprobes (same pid)."""
    if boot.trace is None:
        return []
    out: list[dict[str, Any]] = []
    pending: dict[str, dict[str, Any]] = {}
    for line in boot.trace.splitlines():
        if (m := KPROBE_ENTRY.search(line)) is not None:
            name = m.group("name")
            pending[m.group("pid")] = {
                "name": None if name == "(fault)" else name.strip('"'),
                "start": int(m.group("s"), 16), "end": int(m.group("e"), 16),
                "base": int(m.group("base"), 16) if m.group("base") else None}
        elif (r := KPROBE_RET.search(line)) is not None and r.group("pid") in pending:
            entry = pending.pop(r.group("pid"))
            entry.update(caller=r.group("caller"), pages=int(r.group("pages")))
            out.append(entry)
    return out


def check_trace_matches_freeing(boot: Boot, ledger: dict[str, Any]) -> bool:
    """Σ pages of the free_reserved_area kretprobes, by name, equal the Freeing lines.

    Returns False when the boot has no such probes.
    """
    frees = [f for f in trace_frees(boot) if f["name"] is not None]
    if not frees:
        return False
    by_name: dict[str, int] = {}
    for f in frees:
        by_name[f["name"]] = by_name.get(f["name"], 0) + f["pages"] * PAGE
    for name, size in by_name.items():
        assert boot.freed(name) == size, f"trace frees {size} bytes of {name!r}, kernel says {boot.freed(name)}"
    assert ledger["kernel_accounting"]["trace_freed_by_name"] == by_name
    return True


def check_crashkernel(boot: Boot, ledger: dict[str, Any]) -> None:
    m = re.search(r"crashkernel=(\d+)M", " ".join(boot.cmdline))
    assert m is not None
    assert ledger["low_memory"]["crashkernel_bytes"] == int(m.group(1)) << 20
    assert re.search(r"crashkernel reserved: |Reserving \d+MB of memory at", boot.dmesg)


def check_all(boot: Boot, ledger: dict[str, Any]) -> list[str]:
    """Run every identity that applies; return the names of those that ran."""
    ran = ["reclaimed"]
    check_reclaimed(boot, ledger)
    check_nothing_below_1m_freed(boot, ledger)
    ran.append("below_1m")
    if boot.efi_firmware and boot.has_arg("efi=debug"):
        check_efi_debug_keeps_all(boot, ledger)
        ran.append("efi_debug")
    if check_memmap_vs_memblock(boot, ledger):
        ran.append("memmap_vs_memblock")
    check_residual_explained(boot, ledger)
    ran.append("residual")
    if boot.efi_firmware:
        check_leak(boot, ledger)
        ran.append("leak")
    if check_trace_matches_freeing(boot, ledger):
        ran.append("trace")
    if any(a.startswith("crashkernel=") for a in boot.cmdline):
        check_crashkernel(boot, ledger)
        ran.append("crashkernel")
    return ran
