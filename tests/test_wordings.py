"""Wordings of older and other kernels, each built into a real boot's log.

Every case takes the real 6.12.117 boot g (tests/fixtures/captures), swaps in a line as an
older kernel prints it, and checks the ledger against the figure the line itself states.
The lines are quoted from real logs of those kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import CAPTURES
from memledger.cli.inputs import load
from memledger.cli.render import render_ledger
from memledger.exporters.terminal import console as terminal
from memledger.ledger.compute import compute_ledger
from memledger.tracer import efimap
from memledger.tracer.bootlog import parse_boot
from memledger.tracer.logformat import split_boots

G_TEXT = (CAPTURES / "g-6.12.117-default" / "root" / "dmesg.txt").read_text()
BIOS_TEXT = (CAPTURES / "f-6.12.117-seabios-noefi" / "root" / "dmesg.txt").read_text()


def _ledgers(tmp_path: Path, text: str) -> list[dict[str, Any]]:
    path = tmp_path / "kern.log"
    path.write_text(text)
    return [compute_ledger(ev).as_dict() for ev in load(str(path))]


def _replace(text: str, startswith: str, new: str) -> str:
    """``text`` with the message of the one line that starts with ``startswith`` replaced."""
    lines = text.splitlines()
    hits = [i for i, ln in enumerate(lines) if ln.partition("] ")[2].startswith(startswith)]
    assert len(hits) == 1, (startswith, len(hits))
    stamp = lines[hits[0]].partition("] ")[0]
    lines[hits[0]] = f"{stamp}] {new}"
    return "\n".join(lines) + "\n"


def _codes(ledger: dict[str, Any]) -> set[str]:
    return {a["code"] for a in ledger["anomalies"]}


def test_v3_10_memory_line_with_lower_case_k_and_absent() -> None:
    # RHEL 7 (3.10): x86's own mem_init(), before mem_init_print_info().
    line = ("Memory: 4965544k/9437184k available (6886k kernel code, 1049032k absent, "
            "409120k reserved, 4535k data, 1764k init)")
    log = parse_boot(split_boots(_replace(G_TEXT, "Memory: ", line))[0])
    assert log.memory is not None
    assert (log.memory.available_kib, log.memory.total_kib) == (4965544, 9437184)
    assert log.memory.fields_kib == {"kernel code": 6886, "absent": 1049032, "reserved": 409120,
                                     "data": 4535, "init": 1764}


def test_v3_freed_wordings_are_read_with_their_sizes() -> None:
    text = _replace(G_TEXT, "Freeing SMP alternatives memory", "Freeing SMP alternatives: 24k freed")
    text = _replace(text, "Freeing initrd memory", "Freeing initrd memory: 22896k freed")
    text = _replace(text, "Freeing unused kernel image (initmem) memory",
                    "Freeing unused kernel memory: 1764k freed")
    log = parse_boot(split_boots(text)[0])
    freed = {f.name: f.kib for f in log.freeing}
    assert freed["SMP alternatives"] == 24 and freed["initrd"] == 22896
    assert freed["unused kernel"] == 1764
    assert log.init_done is not None


def test_v4_freeing_line_with_addresses() -> None:
    # free_reserved_area() printed the range until adb1fe9ae2ee ("mm/page_alloc: Remove
    # kernel address exposure in free_reserved_area()", v4.10).
    text = _replace(G_TEXT, "Freeing initrd memory",
                    "Freeing initrd memory: 36980K (ffff8800337b6000 - ffff880035bd3000)")
    log = parse_boot(split_boots(text)[0])
    assert [f.kib for f in log.freeing if f.name == "initrd"] == [36980]


def test_a_whole_boot_of_an_older_kernel_is_not_truncated(tmp_path: Path) -> None:
    lines = G_TEXT.splitlines()
    end = next(i for i, ln in enumerate(lines) if "Freeing unused kernel image (initmem)" in ln)
    # Before v4.19 nothing says "Run /init as init process"; x86_64 has always printed
    # "Write protecting the kernel read-only data" after free_initmem().
    cut = [ln for ln in lines[:end + 1] if "Freeing unused kernel" not in ln
           and "Run /init as init process" not in ln]
    cut.append("[    2.412017] Write protecting the kernel read-only data: 12288k")
    (ledger,) = _ledgers(tmp_path, "\n".join(cut) + "\n")
    assert "log_truncated" not in _codes(ledger)
    (short,) = _ledgers(tmp_path, "\n".join(cut[:-1]) + "\n")
    assert "log_truncated" in _codes(short)


def test_debug_pagealloc_boot_ends_init_without_a_freeing_line(tmp_path: Path) -> None:
    text = _replace(G_TEXT, "Freeing unused kernel image (initmem) memory",
                    "debug: unmapping init [mem 0xffffffff8a9b1000-0xffffffff8adfffff]")
    text = "\n".join(ln for ln in text.splitlines()
                     if "Run /init" not in ln and "Freeing unused kernel" not in ln
                     and "Write protecting" not in ln) + "\n"
    (ledger,) = _ledgers(tmp_path, text)
    assert "log_truncated" not in _codes(ledger)


def test_invalid_efi_memmap_entries_are_not_the_map(tmp_path: Path) -> None:
    # efi_clean_memmap() prints these and drops them; without efi=debug no map follows.
    lines = G_TEXT.splitlines()
    at = next(i for i, ln in enumerate(lines) if "efi: EFI v" in ln) + 2
    lines[at:at] = [
        "[    0.000000] efi: [Firmware Bug]: Invalid EFI memory map entries:",
        "[    0.000000] efi: mem00: [Reserved           |   |  |  |  |  |  |  |  |   |  |  |  |  ] "
        "range=[0x0000000000000000-0xffffffffffffffff] (invalid)",
        "[    0.000000] efi: mem43: [MMIO               |RUN|  |  |  |  |  |  |  |   |  |  |  |UC] "
        "range=[0x00000000ff000000-0x0000000100ffffff] (invalid)",
    ]
    log = parse_boot(split_boots("\n".join(lines))[0])
    assert log.efi_memmap == [] and log.efi_invalid_entries == 2
    (ledger,) = _ledgers(tmp_path, "\n".join(lines) + "\n")
    assert ledger["efi_boot_services"]["cross_checks"]["efi_memmap_bytes"] is None
    assert ledger["fidelity"]["efi_memmap_printed"] is False


def test_v3_efi_memmap_rows_with_numbers() -> None:
    # Up to v3.17 efi_print_memmap() printed numbers and an exclusive end.
    row = efimap.parse_memmap_line(
        "efi: mem01: type=4, attr=0x800000000000000f, range=[0x0000000000001000-0x0000000000003000) (0MB)")
    assert row is not None and row.boot_services and row.runtime
    assert (row.start, row.end) == (0x1000, 0x3000)
    empty = efimap.parse_memmap_line(
        "efi: mem44: type=0, attr=0x0, range=[0x0000000000000000-0x0000000000000000) (0MB)")
    assert empty is not None and empty.end == empty.start


def test_old_efi_banner_without_prefix() -> None:
    text = _replace(G_TEXT, "efi: EFI v", "EFI v2.31 by American Megatrends")
    log = parse_boot(split_boots(text)[0])
    assert (log.efi_version, log.efi_vendor) == ("2.31", "American Megatrends")


def test_kdump_kernel_is_known_from_its_command_line(tmp_path: Path) -> None:
    cmdline = next(ln for ln in G_TEXT.splitlines() if "] Command line: " in ln)
    text = G_TEXT.replace(cmdline, cmdline + " irqpoll nr_cpus=1 reset_devices "
                          "elfcorehdr=0x7d000000 crashkernel=256M")
    (ledger,) = _ledgers(tmp_path, text)
    assert ledger["kernel"]["kdump"] is True
    assert "kexec_boot" in _codes(ledger) and "reclaim_unknown" not in _codes(ledger)
    bs = ledger["efi_boot_services"]
    assert bs["total_bytes"] is None and bs["reclaimed_bytes"] is None
    (plain,) = _ledgers(tmp_path, G_TEXT)
    assert plain["kernel"]["kdump"] is False and "kexec_boot" not in _codes(plain)


def test_efi_debug_on_a_bios_boot_is_no_anomaly(tmp_path: Path) -> None:
    (ledger,) = _ledgers(tmp_path, BIOS_TEXT)
    assert "efi=debug" in ledger["kernel"]["cmdline"] and ledger["firmware"]["efi"] is False
    assert "efi_debug_set" not in _codes(ledger)


def _table(ledger: dict[str, Any]) -> str:
    console = terminal(record=True, width=120)
    render_ledger(ledger, console)
    return console.export_text()


def test_the_table_says_what_a_bare_log_cannot_show(tmp_path: Path) -> None:
    # Boot g printed its "Freeing EFI boot services memory" line; taken out, the table must
    # say why the reclaimed figure is unknown instead of a bare "unknown".
    text = "\n".join(ln for ln in G_TEXT.splitlines() if "Freeing EFI boot services" not in ln)
    (ledger,) = _ledgers(tmp_path, text + "\n")
    table = _table(ledger)
    assert "cannot show: how much boot-services memory was freed" in table
    assert "cannot show: a leak" in table
    (full,) = _ledgers(tmp_path, G_TEXT)
    assert "boot-services memory was freed" not in _table(full)


def test_the_table_of_a_bios_boot_says_not_efi(tmp_path: Path) -> None:
    (ledger,) = _ledgers(tmp_path, BIOS_TEXT)
    section = _table(ledger).split("Below 1 MiB")[0]
    assert "not an EFI boot" in section and "does not apply" in section
    assert "unknown" not in section


@pytest.mark.slow
def test_a_log_without_its_boot_is_read_not_refused(tmp_path: Path) -> None:
    # A syslog of a day without a reboot: kernel lines, none from the boot.
    late = [ln for ln in G_TEXT.splitlines()[-60:] if "Freeing" not in ln and "efi" not in ln]
    text = "\n".join(f"Oct 18 21:26:33 host kernel: {ln}" for ln in late) + "\n"
    (ledger,) = _ledgers(tmp_path, text)
    assert ledger["fidelity"]["log_format"] == "syslog" and ledger["kernel"]["release"] is None
    assert ledger["firmware"]["efi"] is None and "log_truncated" in _codes(ledger)
