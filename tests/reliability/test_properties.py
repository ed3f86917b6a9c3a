"""Property tests (hypothesis, issue 8): the ledger identities for generated boots, and
render → parse round trips of the kernel's line formats.

The generator plays the kernel: it lays out EFI boot-services regions, reserves them as
efi_reserve_boot_services() does, splits parts out as efi_mem_reserve() does, and frees
the rest above 1 MiB as efi_free_boot_services() does (f1d4d47c5851 clamps at 1 MiB),
printing what a memblock=debug boot prints: memblock_reserve lines, "e820: update"
lines, and either one "efi: Freeing EFI boot services memory" total (a4b0bf6a40f3) or
one memblock_free_late line per freed piece (before it). What it freed and kept is the
oracle; the ledger is computed from the rendered text alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memledger.ledger.compute import compute_ledger
from memledger.tracer import e820, efimap, memblock
from memledger.tracer.evidence import build_evidence
from memledger.tracer.reader import Snapshot

PAGE = 4096
SZ_1M = 1 << 20
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class GenBoot:
    regions: list[tuple[int, int]]  # boot-services regions, [start, end)
    split: list[tuple[int, int]]  # efi_mem_reserve() parts, inside regions, above 1 MiB
    style: str  # "freeing_line" (a4b0bf6a40f3) or "free_late" (before it)
    twice: bool  # every line printed twice (a replayed log)
    low_free: tuple[int, int] | None  # a buggy kernel's free below 1 MiB (free_late only)

    def freed_pieces(self) -> list[tuple[int, int]]:
        out = []
        for s, e in self.regions:
            s = max(s, SZ_1M)  # f1d4d47c5851: nothing below 1 MiB
            cuts = sorted((a, b) for a, b in self.split if s <= a and b <= e)
            for a, b in cuts:
                if a > s:
                    out.append((s, a))
                s = b
            if e > s:
                out.append((s, e))
        return out

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self.regions)

    @property
    def freed(self) -> int:
        return sum(e - s for s, e in self.freed_pieces())

    @property
    def below_1m(self) -> int:
        return sum(max(0, min(e, SZ_1M) - s) for s, e in self.regions)

    def render(self) -> str:
        t = 0

        def line(msg: str) -> str:
            nonlocal t
            t += 1
            out = f"[{t / 1e6:12.6f}] {msg}\n"
            return out * 2 if self.twice else out

        text = line("Linux version 6.12.117+deb12-amd64 (debian-kernel@lists.debian.org) "
                    "(gcc 12) #1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1~bpo12+1 (2026-10-20)")
        text += line("Command line: BOOT_IMAGE=/vmlinuz root=/dev/vda1 memblock=debug")
        text += line("efi: EFI v2.7 by EDK II")
        for s, e in self.regions:
            text += line(f"memblock_reserve: [0x{s:016x}-0x{e - 1:016x}] "
                         "efi_reserve_boot_services+0x85/0xd0")
        for s, e in self.split:
            text += line(f"e820: update [mem 0x{s:08x}-0x{e - 1:08x}] usable ==> reserved")
        if self.style == "freeing_line":
            if self.freed:
                text += line(f"efi: Freeing EFI boot services memory: {self.freed // 1024}K")
        else:
            pieces = self.freed_pieces() + ([self.low_free] if self.low_free else [])
            for s, e in pieces:
                text += line(f"memblock_free_late: [0x{s:016x}-0x{e - 1:016x}] "
                             "efi_free_boot_services+0x1a2/0x2c0")
        text += line("Freeing unused kernel image (initmem) memory: 2796K")
        return text


@st.composite
def gen_boots(draw: st.DrawFn) -> GenBoot:
    addr = draw(st.integers(0, 300)) * PAGE  # sometimes below 1 MiB
    regions: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(1, 10))):
        size = draw(st.integers(1, 4096)) * PAGE
        regions.append((addr, addr + size))
        addr += size + draw(st.sampled_from([0, PAGE, 16 * PAGE, 1 << 24]))  # 0: adjacent
    split = []
    for s, e in regions:
        s = max(s, SZ_1M)
        if e - s >= 3 * PAGE and draw(st.booleans()):
            a = s + draw(st.integers(1, (e - s) // PAGE - 2)) * PAGE
            b = a + draw(st.integers(1, (e - a) // PAGE - 1)) * PAGE
            split.append((a, b))
    style = draw(st.sampled_from(["freeing_line", "free_late"]))
    low_free = None
    if style == "free_late" and regions[0][0] < SZ_1M and draw(st.booleans()):
        s = regions[0][0]
        low_free = (s, min(regions[0][1], SZ_1M))
    return GenBoot(regions, split, style, draw(st.booleans()), low_free)


def _ledger(text: str) -> dict[str, Any]:
    snap = Snapshot(root="generated")
    snap.kernel_log = text
    evidence = build_evidence(snap, host_data=False)
    assert len(evidence) == 1
    return compute_ledger(evidence[0]).as_dict()


@SETTINGS
@given(gen_boots())
def test_ledger_identities_hold_for_generated_boots(boot: GenBoot) -> None:
    doc = _ledger(boot.render())
    bs = doc["efi_boot_services"]
    reasons = bs["kept_by_reason"]
    low_freed = boot.low_free[1] - boot.low_free[0] if boot.low_free else 0
    reclaimed = boot.freed + low_freed
    # Nothing freed prints nothing (no Freeing line, no free_late line): unknown.
    reclaimed_want = reclaimed or None
    # The generator's figures, not memledger's, are the oracle.
    assert bs["total_bytes"] == boot.total
    assert bs["reclaimed_bytes"] == reclaimed_want
    if reclaimed_want is None:
        return
    # total = reclaimed + kept, and kept is exactly its reasons
    assert bs["total_bytes"] == bs["reclaimed_bytes"] + bs["kept_bytes"]
    assert bs["kept_bytes"] == sum(v for v in reasons.values() if v is not None)
    # nothing counted twice: a replayed log changes nothing (checked against the oracle)
    assert reasons["efi_mem_reserve"] == sum(b - a for a, b in boot.split)
    # below 1 MiB: what was reserved there is kept there, unless a buggy kernel freed it
    assert reasons["below_1m"] == boot.below_1m - low_freed
    assert doc["low_memory"]["boot_services_bytes"] == boot.below_1m
    if boot.style == "free_late":
        assert doc["low_memory"]["freed_bytes"] == low_freed
    codes = {a["code"] for a in doc["anomalies"]}
    assert ("low_memory_freed" in codes) == bool(low_freed)
    assert reasons["unexplained"] == 0


@SETTINGS
@given(gen_boots())
def test_a_replayed_log_gives_the_same_ledger(boot: GenBoot) -> None:
    boot.twice = False
    once = _ledger(boot.render())
    boot.twice = True
    twice = _ledger(boot.render())
    assert once["efi_boot_services"] == twice["efi_boot_services"]
    assert once["low_memory"] == twice["low_memory"]


# --- render → parse round trips --------------------------------------------------------

# efi_md_typeattr_format(): 13-wide short names (v5.10+), 15 attribute fields (ba69e0750b03).
TYPES = ["Reserved", "Loader Code", "Loader Data", "Boot Code", "Boot Data", "Runtime Code",
         "Runtime Data", "Conventional", "Unusable", "ACPI Reclaim", "ACPI Mem NVS", "MMIO",
         "MMIO Port", "PAL Code", "Persistent"]
ATTRS = ["RUN", "HP", "MR", "CC", "SP", "NV", "XP", "RP", "WP", "RO", "UCE", "WB", "WT", "WC", "UC"]
WIDTHS = [3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 2, 2, 2]


def render_memmap_line(i: int, type_: int, attrs: set[str], start: int, pages: int) -> str:
    cols = "|".join(f"{a if a in attrs else '':>{w}}" for a, w in zip(ATTRS, WIDTHS, strict=True))
    last = start + pages * PAGE - 1
    return (f"efi: mem{i:02d}: [{TYPES[type_]:<12}|{cols}] range=[0x{start:016x}-0x{last:016x}] "
            f"({pages >> 8}MB)")


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(TYPES) - 1), st.sets(st.sampled_from(ATTRS)),
                          st.integers(1, 1 << 20)), min_size=1, max_size=40),
       st.integers(0, 1 << 30))
def test_efi_memmap_render_parse_round_trip(rows: list[tuple[int, set[str], int]], base: int) -> None:
    start = base * PAGE
    for i, (type_, attrs, pages) in enumerate(rows):
        d = efimap.parse_memmap_line(render_memmap_line(i, type_, attrs, start, pages))
        assert d is not None
        assert (d.index, d.type, d.attrs, d.start, d.end) == (i, type_, frozenset(attrs), start,
                                                              start + pages * PAGE)
        assert d.boot_services == (type_ in (3, 4))
        start += pages * PAGE


@SETTINGS
@given(st.integers(0, (1 << 52) - 1), st.integers(1, 1 << 40),
       st.one_of(st.none(), st.tuples(st.integers(-1, 1023), st.integers(0, 0xFFFF))),
       st.sampled_from(["memblock_reserve", "memblock_free_late", "__memblock_free_late",
                        "memblock_phys_free", "memblock_remove"]))
def test_memblock_range_render_parse_round_trip(start: int, size: int, nid_flags: tuple[int, int] | None,
                                                fn: str) -> None:
    extra = f" nid={nid_flags[0]} flags={nid_flags[1]:x}" if nid_flags else ""
    ev = memblock.parse_range(f"{fn}: [0x{start:016x}-0x{start + size - 1:016x}]{extra} "
                              "setup_arch+0x1/0x2")
    assert ev is not None
    assert (ev.start, ev.end, ev.caller_fn) == (start, start + size, "setup_arch")
    assert (ev.nid, ev.flags) == (nid_flags if nid_flags else (None, None))
    assert ev.op == fn.lstrip("_").removeprefix("memblock_")


@SETTINGS
@given(st.integers(0, (1 << 52) - 1), st.integers(1, 1 << 40),
       st.sampled_from(["usable", "reserved", "ACPI data", "ACPI NVS", "unusable",
                        "persistent (type 12)", "soft reserved"]))
def test_e820_render_parse_round_trip(start: int, size: int, kind: str) -> None:
    entry = e820.parse_entry(f"BIOS-e820: [mem 0x{start:016x}-0x{start + size - 1:016x}] {kind}")
    assert entry is not None
    assert (entry.start, entry.end, entry.raw_type) == (start, start + size, kind)
    change = e820.parse_change(f"e820: update [mem 0x{start:08x}-0x{start + size - 1:08x}] "
                               f"{kind} ==> reserved")
    assert change is not None and (change.start, change.end, change.new) == (start, start + size,
                                                                             "reserved")
