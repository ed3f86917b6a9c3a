"""Ledger behaviour on kernels the captures do not cover, built from capture j.

Capture j (6.1.0-47, memblock=debug) is edited the way an older kernel would have
printed it: the figures asserted are those of the edited lines themselves.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from conftest import CAPTURES, analyze_json

J = CAPTURES / "j-6.1.0-47-memblock-trace-no-efi-debug"
SZ_1M = 1 << 20


def _efi_reserves(text: str) -> list[tuple[int, int]]:
    return [(int(a, 16), int(b, 16) + 1) for a, b in re.findall(
        r"memblock_reserve: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\] efi_reserve_boot_services", text)]


def _pre_fix_log(text: str, free_below_1m: bool = False) -> tuple[str, int]:
    """Replace the 2026 summary line with per-region memblock_free_late lines (pre-a4b0bf6a40f3)."""
    lines, freed = [], 0
    for a, b in _efi_reserves(text):
        if b <= SZ_1M and not free_below_1m:
            continue
        lines.append(f"[    0.500000] memblock_free_late: [{a:#018x}-{b - 1:#018x}] efi_free_boot_services+0x14b/0x23b")
        freed += b - a
    out = re.sub(r"\[[ \d.]+\] efi: Freeing EFI boot services memory: \d+K\n", "\n".join(lines) + "\n", text)
    assert out != text
    return out, freed


def test_pre_fix_kernel_reclaim_comes_from_memblock_free_late(tmp_path: Path) -> None:
    text, freed = _pre_fix_log((J / "root" / "dmesg.txt").read_text())
    log = tmp_path / "dmesg.txt"
    log.write_text(text)
    bs = analyze_json(log)["efi_boot_services"]
    assert bs["reclaimed_source"] == "memblock_free_late"
    assert bs["reclaimed_bytes"] == freed
    assert bs["total_bytes"] == bs["reclaimed_bytes"] + bs["kept_bytes"]
    assert bs["kept_by_reason"]["below_1m"] == 4096


def test_pre_fix_residual_is_explained_by_the_silent_frees(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(J / "root", root)
    text, freed = _pre_fix_log((J / "root" / "dmesg.txt").read_text())
    (root / "dmesg.txt").write_text(text)
    d = analyze_json(root)
    acct = d["kernel_accounting"]
    # Nothing printed a Freeing line for those pages, yet zoneinfo counts them managed.
    assert acct["residual_bytes"] == freed
    assert acct["silent_freed_by_caller"] == {"efi_free_boot_services": freed}
    assert acct["unexplained_residual_bytes"] == 0
    assert [a["severity"] for a in d["anomalies"] if a["code"] == "accounting_residual"] == ["info"]


def test_sub_1m_free_is_an_error(tmp_path: Path) -> None:
    text, _ = _pre_fix_log((J / "root" / "dmesg.txt").read_text(), free_below_1m=True)
    log = tmp_path / "dmesg.txt"
    log.write_text(text)
    d = analyze_json(log)
    assert d["low_memory"]["freed_bytes"] == 4096  # the Boot Data page at 0x87000
    assert [a["severity"] for a in d["anomalies"] if a["code"] == "low_memory_freed"] == ["error"]


def test_deferred_init_leak(tmp_path: Path) -> None:
    # Pre-v6.19 memblock_free_late() counts skipped deferred pages in totalram: MemTotal
    # grows, Σ managed does not.
    root = tmp_path / "root"
    shutil.copytree(J / "root", root)
    meminfo = root / "proc" / "meminfo"
    text = meminfo.read_text()
    memtotal = int(re.search(r"MemTotal:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]
    meminfo.write_text(text.replace(f"{memtotal} kB", f"{memtotal + 171_796} kB", 1))
    d = analyze_json(root)
    assert d["efi_boot_services"]["leaked_bytes"] == 171_796 * 1024
    assert [a["severity"] for a in d["anomalies"] if a["code"] == "leak"] == ["error"]


def test_missing_files_lower_fidelity_not_an_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(J / "root", root)
    shutil.rmtree(root / "sys")
    (root / "proc" / "zoneinfo").unlink()
    d = analyze_json(root)
    src = d["fidelity"]["sources"]
    assert src["efi_runtime_map"] is False and src["proc_zoneinfo"] is False
    assert d["kernel_accounting"]["residual_bytes"] is None
    assert d["efi_boot_services"]["leaked_bytes"] is None
    assert d["efi_boot_services"]["total_source"] == "memblock"
    assert d["efi_boot_services"]["kept_by_reason"]["runtime"] is None


def test_truncated_log_is_flagged(tmp_path: Path) -> None:
    lines = (J / "root" / "dmesg.txt").read_text().splitlines()
    log = tmp_path / "dmesg.txt"
    log.write_text("\n".join(lines[400:]) + "\n")
    d = analyze_json(log)
    assert d["fidelity"]["log_complete"] is False
    assert any(a["code"] == "log_truncated" for a in d["anomalies"])
    # The Freeing line survived the cut, so the reclaimed figure is still the kernel's.
    assert d["efi_boot_services"]["reclaimed_bytes"] == 43144 * 1024
    assert d["efi_boot_services"]["total_bytes"] is None
