"""The ledger against real boots committed under tests/fixtures/boots.

Each folder is what ``memledger lab matrix`` wrote for one Debian kernel in one
configuration under QEMU (OVMF or SeaBIOS). The identities in tests/identities.py take
the kernel's own output as the oracle; the same checks run live in tests/e2e.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import FIXTURES, analyze_json
from identities import EXPECTED, check_all, efi_free_late, load_boot, unmanaged_totalram, whole_pages

BOOTS = FIXTURES / "boots"
BOOT_NAMES = sorted(p.name for p in BOOTS.iterdir() if (p / "lab.json").is_file())

def _lab(name: str) -> dict[str, object]:
    return json.loads((BOOTS / name / "lab.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", BOOT_NAMES)
def test_identities_hold(name: str) -> None:
    folder = BOOTS / name
    ledger = analyze_json(folder / "root")
    assert isinstance(ledger, dict), "one capture is one boot"
    ran = set(check_all(load_boot(folder), ledger))
    config = str(_lab(name)["config"])
    assert EXPECTED[config] <= ran


@pytest.mark.parametrize("name", BOOT_NAMES)
def test_console_log_gives_the_same_reclaimed_figure(name: str) -> None:
    """The serial console alone (what a fleet's console server keeps) gives the kernel's
    figure too, and is one boot even though /init's lines follow the kernel's."""
    folder = BOOTS / name
    console = analyze_json(folder / "console.log")
    assert isinstance(console, dict)
    text = (folder / "console.log").read_text()
    m = re.search(r"efi: Freeing EFI boot services memory: (\d+)K", text)
    late = efi_free_late(text)
    if m:
        expected: int | None = int(m.group(1)) * 1024
    elif late:  # before a4b0bf6a40f3, with memblock=debug: each region's whole pages
        expected = whole_pages(late)
    else:
        expected = (0 if "efi=debug" in (folder / "cmdline.txt").read_text()
                    and _lab(name)["firmware"] == "ovmf" else None)
    assert console["efi_boot_services"]["reclaimed_bytes"] == expected


def test_the_committed_boots_cover_the_matrix() -> None:
    labs = [_lab(n) for n in BOOT_NAMES]
    assert len(labs) >= 12
    releases = {str(lab["release"]) for lab in labs}
    assert any(r.startswith("6.1.0-") for r in releases)
    assert any(r.startswith("6.12.") for r in releases)
    assert len({r for r in releases if r.startswith("6.1.0-") and not r.endswith("cloud-amd64")}) >= 2
    assert any(r.endswith("-cloud-amd64") for r in releases)
    # Every era: 5.10 (before the 2026 fix), trixie's 6.12, 7.x and 7.x-rc.
    for prefix in ("5.10.0-", "6.12.", "7.2.", "7.3"):
        assert any(r.startswith(prefix) for r in releases), prefix
    assert any(r.endswith("+deb13-amd64") for r in releases)
    # 5.10 with the fix backported (bullseye-security, ABI 44 on).
    assert any(re.fullmatch(r"5\.10\.0-(4[4-9]|[5-9]\d)-amd64", r) for r in releases)
    assert {lab["firmware"] for lab in labs} == {"ovmf", "seabios"}
    assert {lab["config"] for lab in labs} == set(EXPECTED)
    for name, lab in zip(BOOT_NAMES, labs, strict=True):
        assert name == f"{lab['release']}-{lab['config']}"
        assert Path(BOOTS / name / "root" / "proc" / "sys" / "kernel" / "osrelease").read_text().strip() == lab["release"]


def _era_boots(prefix: str) -> list[str]:
    return [n for n in BOOT_NAMES if n.startswith(prefix)]


def _managed_gap(name: str) -> int:
    """MemTotal - 4 KiB x Σ zone managed, read straight from the capture."""
    gap = unmanaged_totalram(load_boot(BOOTS / name))
    assert gap is not None
    return gap


@pytest.mark.parametrize("config", ["default", "memblock"])
def test_510_leaks_deferred_pages_on_2g(config: str) -> None:
    """Debian 5.10 predates a4b0bf6a40f3: on 2 GiB the DMA32 zone is the highest and is
    deferred, so memblock_free_late skips most boot-services pages (counted in MemTotal,
    never managed). The kernel's own counters give the figure."""
    [name] = [n for n in _era_boots("5.10.0-32-") if n.endswith(f"-{config}")]
    gap = _managed_gap(name)
    assert gap > 16 << 20  # tens of MiB on OVMF's 2 GiB layout
    assert analyze_json(BOOTS / name / "root")["efi_boot_services"]["leaked_bytes"] == gap


def test_510_does_not_leak_on_8g() -> None:
    """With 8 GiB ZONE_NORMAL is the highest zone, so DMA32 (where OVMF puts boot services)
    is initialised early and every memblock_free_late page reaches the allocator."""
    [name] = [n for n in _era_boots("5.10.0-32-") if n.endswith("-mem8g")]
    assert _managed_gap(name) == 0
    assert analyze_json(BOOTS / name / "root")["efi_boot_services"]["leaked_bytes"] == 0


def test_510_memblock_boot_reconciles_with_its_free_late_lines() -> None:
    """reclaimed = the whole pages of memblock_free_late … efi_free_boot_services, and the
    page it frees below 1 MiB (before f1d4d47c5851, v5.13) is accounted, not hidden."""
    [name] = [n for n in _era_boots("5.10.0-32-") if n.endswith("-memblock")]
    late = efi_free_late((BOOTS / name / "root" / "dmesg.txt").read_text())
    assert late
    d = analyze_json(BOOTS / name / "root")
    bs = d["efi_boot_services"]
    assert bs["reclaimed_bytes"] == whole_pages(late)
    low = sum(min(e, 1 << 20) - s for s, e in late if s < 1 << 20)
    assert low > 0 and d["low_memory"]["freed_bytes"] == low
    assert bs["kept_by_reason"]["unexplained"] == 0
    assert d["kernel_accounting"]["unexplained_residual_bytes"] == 0


# 5.10 with a4b0bf6a40f3 backported: bullseye-security from ABI 44 (5.10.257-1) on.
LTS_510 = [n for n in BOOT_NAMES if re.fullmatch(r"5\.10\.0-(4[4-9]|[5-9]\d)-amd64", str(_lab(n)["release"]))]


def test_510_backport_reconciles_to_the_byte_with_the_page_it_frees_below_1m() -> None:
    """5.10's backport of a4b0bf6a40f3 frees at arch_initcall, after deferred init, so on
    2 GiB (where 5.10 before it leaks tens of MiB) MemTotal equals Σ zone managed. Without
    f1d4d47c5851 (v5.13) it frees every region efi_reserve_boot_services() reserved, below
    1 MiB too, and prints their sum less the e820 updates efi_mem_reserve() made inside
    them. So kept = reasons exactly, with the page below 1 MiB among the freed
    (low_memory_freed, info), not kept as below_1m."""
    [name] = [n for n in LTS_510 if n.endswith("-memblock")]
    text = (BOOTS / name / "root" / "dmesg.txt").read_text()
    line = int(re.search(r"efi: Freeing EFI boot services memory: (\d+)K", text).group(1)) * 1024  # type: ignore[union-attr]
    owned = [(int(a, 16), int(b, 16) + 1) for a, b in re.findall(
        r"memblock_reserve: \[0x([0-9a-f]+)-0x([0-9a-f]+)\] efi_reserve_boot_services\+", text)]
    updates = [(int(a, 16), int(b, 16) + 1) for a, b in re.findall(
        r"e820: update \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] usable ==> reserved", text)]
    inside = [(s, e) for s, e in updates if any(o <= s and e <= p for o, p in owned)]
    assert sum(e - s for s, e in owned) - sum(e - s for s, e in inside) == line
    assert _managed_gap(name) == 0
    low = sum(min(e, 1 << 20) - s for s, e in owned if s < 1 << 20)
    assert low > 0
    for source in (BOOTS / name / "root", BOOTS / name / "root" / "dmesg.txt"):
        d = analyze_json(source)
        bs = d["efi_boot_services"]
        assert bs["reclaimed_bytes"] == line
        assert bs["kept_by_reason"]["unexplained"] == 0
        assert bs["kept_by_reason"]["below_1m"] == 0
        assert d["low_memory"]["freed_bytes"] == low
        assert ("low_memory_freed", "info") in {(a["code"], a["severity"]) for a in d["anomalies"]}
    d = analyze_json(BOOTS / name / "root")
    bs = d["efi_boot_services"]
    assert bs["kept_by_reason"]["efi_mem_reserve"] == sum(e - s for s, e in inside)
    assert sum(bs["kept_by_reason"].values()) == bs["kept_bytes"] == bs["total_bytes"] - line
    assert bs["leaked_bytes"] == 0
    assert d["kernel_accounting"]["residual_bytes"] == 0


def test_510_backport_below_1m_is_unknown_when_the_trampoline_takes_a_freed_region(tmp_path: Path) -> None:
    """When reserve_real_mode() finds no sub-1M memory ("No sub-1M memory is available for
    the trampoline"), efi_unmap_boot_services() gives the trampoline the start of the first
    boot-services region it would free below 1 MiB, a size the log does not print: what is
    kept below 1 MiB is then unknown, not the 0 the rest of the regions would give."""
    [name] = [n for n in LTS_510 if n.endswith("-memblock")]
    text = (BOOTS / name / "root" / "dmesg.txt").read_text()
    rm = re.search(r"(?m)^(\[[^]]+\] )memblock_reserve: \[[^]]+\] reserve_real_mode\+.*$", text)
    assert rm is not None
    log = tmp_path / "dmesg.txt"
    log.write_text(text.replace(rm.group(0), rm.group(1) + "No sub-1M memory is available for the trampoline"))
    bs = analyze_json(log)["efi_boot_services"]
    assert bs["reclaimed_bytes"] is not None and bs["kept_by_reason"]["below_1m"] is None


@pytest.mark.parametrize("name", [n for n in BOOT_NAMES if n.startswith("7.") and n.endswith("-memblock")])
def test_7x_efi_mem_reserve_is_rsrv_kern_and_nothing_is_unexplained(name: str) -> None:
    """On 7.x the BGRT image inside a kernel-owned boot-services region is still split out
    with "e820: update … System RAM ==> device reserved" (v7.0's E820 names), and since
    259e3e6f9382 (v7.1) efi_mem_reserve() marks it MEMBLOCK_RSRV_KERN: kept as rsrv_kern,
    from the log alone as well as from the whole capture."""
    text = (BOOTS / name / "root" / "dmesg.txt").read_text()
    updates = [(int(a, 16), int(b, 16) + 1) for a, b in re.findall(
        r"e820: update \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] System RAM ==> device reserved", text)]
    owned = [(int(a, 16), int(b, 16) + 1) for a, b in re.findall(
        r"__memblock_reserve: \[0x([0-9a-f]+)-0x([0-9a-f]+)\] nid=-1 flags=0 efi_reserve_boot_services\+", text)]
    inside = sum(e - s for s, e in updates if any(o <= s and e <= p for o, p in owned))
    assert inside > 0
    for source in (BOOTS / name / "root", BOOTS / name / "root" / "dmesg.txt"):
        reasons = analyze_json(source)["efi_boot_services"]["kept_by_reason"]
        assert reasons["rsrv_kern"] == inside
        assert reasons["efi_mem_reserve"] == 0
        assert reasons["unexplained"] == 0
