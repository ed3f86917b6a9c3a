"""The ledger of every real capture (Debian 6.1.0-47 and 6.12.117 under OVMF/SeaBIOS).

Every expected number is read from the kernel's own output in the fixture with a plain
regular expression here, not computed by memledger's code.
"""

from __future__ import annotations

import re

from conftest import CAPTURES, analyze_json, dmesg_text, kernel_efi_freed_bytes

SZ_1M = 1 << 20


def _memblock_efi_reserved(text: str) -> int:
    """Σ sizes of 'memblock_reserve: [a-b] efi_reserve_boot_services+…' (inclusive ends)."""
    total = 0
    for a, b in re.findall(r"memblock_reserve: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\] efi_reserve_boot_services", text):
        total += int(b, 16) - int(a, 16) + 1
    return total


def _memmap_boot_services(text: str) -> int:
    """Σ Boot Code/Data sizes in the first 'efi: memNN:' dump (efi=debug)."""
    total, seen = 0, set()
    for idx, kind, a, b in re.findall(
            r"efi: mem(\d+): \[(Boot Code|Boot Data|[^|]+)\s*\|[^\]]*\] range=\[(0x[0-9a-f]+)-(0x[0-9a-f]+)\]", text):
        if idx in seen:
            break
        seen.add(idx)
        if kind.strip() in ("Boot Code", "Boot Data"):
            total += int(b, 16) - int(a, 16) + 1
    return total


def test_reclaimed_is_the_kernels_freeing_figure(capture: str) -> None:
    d = analyze_json(CAPTURES / capture / "root")
    expected = kernel_efi_freed_bytes(dmesg_text(capture))
    bs = d["efi_boot_services"]
    if expected is not None:
        assert bs["reclaimed_bytes"] == expected
        assert bs["reclaimed_source"] == "kernel_log"
    else:  # efi=debug (a) and SeaBIOS (f): no line, and no figure claimed from one
        assert bs["reclaimed_source"] != "kernel_log"
        assert bs["reclaimed_bytes"] in (0, None)


def test_total_is_reclaimed_plus_kept_exactly(capture: str) -> None:
    bs = analyze_json(CAPTURES / capture / "root")["efi_boot_services"]
    if bs["total_bytes"] is None:
        assert bs["kept_bytes"] is None
        return
    assert bs["total_bytes"] == bs["reclaimed_bytes"] + bs["kept_bytes"]
    reasons = bs["kept_by_reason"]
    assert None not in reasons.values()
    assert sum(reasons.values()) == bs["kept_bytes"]
    assert reasons["unexplained"] == 0


def test_efi_debug_boot_keeps_everything() -> None:
    name = "a-6.1.0-47-efi-debug-memblock-trace"
    d = analyze_json(CAPTURES / name / "root")
    bs = d["efi_boot_services"]
    assert "efi=debug" in (CAPTURES / name / "root" / "proc" / "cmdline").read_text()
    assert bs["total_source"] == "efi_memmap"
    assert bs["total_bytes"] == _memmap_boot_services(dmesg_text(name)) == 44_240_896
    assert bs["reclaimed_bytes"] == 0
    assert bs["kept_by_reason"]["efi_debug"] == bs["total_bytes"]
    codes = {a["code"]: a["severity"] for a in d["anomalies"]}
    assert codes.get("efi_debug_set") == "warning"


def test_seabios_boot_has_no_boot_services_numbers() -> None:
    d = analyze_json(CAPTURES / "f-6.12.117-seabios-noefi" / "root")
    assert d["firmware"]["efi"] is False
    bs = d["efi_boot_services"]
    for key in ("total_bytes", "reclaimed_bytes", "kept_bytes", "kept_by_reason", "leaked_bytes"):
        assert bs[key] is None, key
    # efi=debug was on that cmdline too: it does nothing on a BIOS boot, so no anomaly.
    assert "efi=debug" in d["kernel"]["cmdline"]
    assert "efi_debug_set" not in {a["code"] for a in d["anomalies"]}


def test_memblock_total_matches_the_reserve_lines() -> None:
    for name in ("h-6.12.117-memblock-trace-no-efi-debug", "j-6.1.0-47-memblock-trace-no-efi-debug",
                 "n-6.12.117-labbootconfig-bootconfig-memblock"):
        bs = analyze_json(CAPTURES / name / "root")["efi_boot_services"]
        assert bs["cross_checks"]["memblock_reserved_bytes"] == _memblock_efi_reserved(dmesg_text(name))
        assert bs["total_source"] == "memblock+runtime_map"


def test_memblock_and_memmap_totals_agree_across_boots_of_one_kernel() -> None:
    # Capture a (efi=debug: the firmware's own map) and j (memblock reserves plus the
    # regions the runtime-map shows as kept) boot the same kernel on the same firmware.
    a = analyze_json(CAPTURES / "a-6.1.0-47-efi-debug-memblock-trace" / "root")["efi_boot_services"]
    j = analyze_json(CAPTURES / "j-6.1.0-47-memblock-trace-no-efi-debug" / "root")["efi_boot_services"]
    assert a["total_bytes"] == j["total_bytes"]


def test_below_1m_is_the_one_page_efi_left_reserved() -> None:
    # h: the kernel reserved 46,908 KiB for boot services and freed 46,904 KiB; the
    # missing page is the Boot Data page at 0x87000, below 1 MiB.
    name = "h-6.12.117-memblock-trace-no-efi-debug"
    text = dmesg_text(name)
    bs = analyze_json(CAPTURES / name / "root")["efi_boot_services"]
    assert "memblock_reserve: [0x0000000000087000-0x0000000000087fff] efi_reserve_boot_services" in text
    assert bs["kept_by_reason"]["below_1m"] == _memblock_efi_reserved(text) - kernel_efi_freed_bytes(text) == 4096


def test_bgrt_split_is_kept_as_efi_mem_reserve() -> None:
    # n: efi_arch_mem_reserve() split the BGRT image out of a kernel-owned region.
    name = "n-6.12.117-labbootconfig-bootconfig-memblock"
    text = dmesg_text(name)
    bs = analyze_json(CAPTURES / name / "root")["efi_boot_services"]
    assert bs["kept_by_reason"]["efi_mem_reserve"] == 36 * 1024
    assert "e820: update [mem 0x7d9ea000-0x7d9f2fff] usable ==> reserved" in text
    # The log alone shows it too: reserved - freed - the sub-1M page.
    assert _memblock_efi_reserved(text) - kernel_efi_freed_bytes(text) - 4096 == 0x7d9f3000 - 0x7d9ea000


def test_runtime_kept_regions_are_the_runtime_map_boot_services_entries() -> None:
    # g: no memblock=debug; the runtime-map still shows what the kernel kept (type 3/4).
    name = "g-6.12.117-default"
    rmap = CAPTURES / name / "root" / "sys" / "firmware" / "efi" / "runtime-map"
    kept = 0
    for entry in rmap.iterdir():
        if int((entry / "type").read_text(), 16) in (3, 4):
            kept += int((entry / "num_pages").read_text(), 16) * 4096
    bs = analyze_json(CAPTURES / name / "root")["efi_boot_services"]
    reasons = bs["kept_by_reason"]
    assert reasons["runtime"] + reasons["efi_mem_reserve"] == kept == 44 * 1024
    assert bs["total_bytes"] is None  # neither efi=debug nor memblock=debug: unknown
    assert reasons["below_1m"] is None


def test_nothing_below_1m_is_freed_and_the_first_mib_stays_reserved(capture: str) -> None:
    low = analyze_json(CAPTURES / capture / "root")["low_memory"]
    assert low["freed_bytes"] == 0
    bios = re.findall(r"BIOS-e820: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] usable", dmesg_text(capture))
    usable = sum(min(int(b, 16) + 1, SZ_1M) - int(a, 16) for a, b in bios if int(a, 16) < SZ_1M)
    assert low["usable_bytes"] == usable
    assert low["reserved_bytes"] == usable


def test_kernel_accounting_residual(capture: str) -> None:
    d = analyze_json(CAPTURES / capture / "root")
    acct = d["kernel_accounting"]
    text = dmesg_text(capture)
    reserved_k = int(re.search(r"Memory: \d+K/\d+K available \(.*?(\d+)K reserved", text).group(1))
    assert acct["boot_reserved_bytes"] == reserved_k * 1024
    meminfo = (CAPTURES / capture / "root" / "proc" / "meminfo").read_text()
    memtotal_k = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1))
    assert acct["memtotal_bytes"] == memtotal_k * 1024
    if capture.startswith("n-"):
        # The lab kernel frees its bootconfig with memblock_free_late(), which prints no
        # Freeing line: whole pages of the two _xbc_exit ranges.
        pages = 0
        for a, b in re.findall(r"memblock_free_late: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\] _xbc_exit", text):
            pages += max(0, (int(b, 16) + 1) // 4096 - -(-int(a, 16) // 4096))
        assert acct["residual_bytes"] == pages * 4096 == 61440
        assert acct["unexplained_residual_bytes"] == 0
    else:
        assert acct["residual_bytes"] == 0


def test_no_leak_on_fixed_kernels(capture: str) -> None:
    d = analyze_json(CAPTURES / capture / "root")
    # Debian 6.1.170 and 6.12.117 carry a4b0bf6a40f3: MemTotal == Σ managed pages.
    assert d["kernel_accounting"]["unmanaged_totalram_bytes"] == 0
    if d["firmware"]["efi"]:
        assert d["efi_boot_services"]["leaked_bytes"] == 0
        assert not [a for a in d["anomalies"] if a["code"] == "leak"]


def test_dmesg_alone_gives_the_same_numbers_where_the_log_suffices(capture: str) -> None:
    full = analyze_json(CAPTURES / capture / "root")
    alone = analyze_json(CAPTURES / capture / "root" / "dmesg.txt")
    fb, ab = full["efi_boot_services"], alone["efi_boot_services"]
    assert ab["reclaimed_bytes"] == fb["reclaimed_bytes"]
    assert alone["firmware"]["efi"] == full["firmware"]["efi"]
    assert alone["kernel"]["release"] == full["kernel"]["release"]
    assert alone["low_memory"]["usable_bytes"] == full["low_memory"]["usable_bytes"]
    assert alone["low_memory"]["freed_bytes"] == full["low_memory"]["freed_bytes"]
    assert alone["kernel_accounting"]["boot_reserved_bytes"] == full["kernel_accounting"]["boot_reserved_bytes"]
    assert alone["kernel_accounting"]["freed_by_name"] == full["kernel_accounting"]["freed_by_name"]
    if fb["total_source"] == "efi_memmap":
        assert ab["total_bytes"] == fb["total_bytes"]
        assert ab["kept_by_reason"] == fb["kept_by_reason"]
    elif fb["total_source"] == "memblock+runtime_map":
        # The log cannot see regions kept because they were already reserved: exactly
        # what the runtime-map adds to the total.
        assert ab["total_source"] == "memblock"
        assert fb["total_bytes"] - ab["total_bytes"] == fb["kept_by_reason"]["runtime"]
        for reason in ("below_1m", "efi_mem_reserve", "efi_debug"):
            assert ab["kept_by_reason"][reason] == fb["kept_by_reason"][reason]
        assert ab["total_bytes"] == ab["reclaimed_bytes"] + ab["kept_bytes"]
        assert ab["kept_by_reason"]["unexplained"] == 0


def test_console_log_with_ring_buffer_replay_is_one_boot(capture: str) -> None:
    d = analyze_json(CAPTURES / capture / "console.log")
    assert isinstance(d, dict), "the dmesg dump at the end of the console is the same boot"
    alone = analyze_json(CAPTURES / capture / "root" / "dmesg.txt")
    assert d["efi_boot_services"]["reclaimed_bytes"] == alone["efi_boot_services"]["reclaimed_bytes"]
    assert d["kernel_accounting"]["boot_reserved_bytes"] == alone["kernel_accounting"]["boot_reserved_bytes"]
