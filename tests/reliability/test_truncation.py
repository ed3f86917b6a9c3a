"""Kernel logs cut short at every section boundary (issue 8), three real boots.

A cut before the kernel's "efi: Freeing EFI boot services memory" line must give an
unknown reclaim, never a guess; a cut after it must give the kernel's figure. Every cut
before "Freeing unused kernel image (initmem)" (free_initmem(), after all initcalls) must
say the log was cut short (``log_truncated``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import kernel_efi_freed_bytes
from contract import analyze_contract

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

BOOTS = Path(__file__).parents[1] / "fixtures" / "boots"
LOGS = ("6.1.0-56-amd64-memblock", "6.12.117+deb12-amd64-crashkernel",
        "6.12.117+deb12-cloud-amd64-default")
# The sections of an x86 EFI boot log, by the first line of each (in boot order, except
# that "Freeing SMP alternatives" comes before or after "Memory:" by kernel).
MARKERS = ("Command line:", "e820: update", "efi: EFI v", "DMI:", "RAMDISK:", "Zone ranges:",
           "Memory: ", "Freeing SMP alternatives", "efi: Freeing EFI boot services",
           "Freeing initrd memory", "Freeing unused kernel image (initmem)", "Run /init")
CASES = [(log, marker) for log in LOGS for marker in MARKERS]


def _index(lines: list[str], marker: str) -> int:
    return next(i for i, ln in enumerate(lines) if marker in ln)


@pytest.mark.parametrize(("log", "marker"), CASES, ids=[f"{lg}-before-{m.strip()}" for lg, m in CASES])
def test_cut_before_each_section(log: str, marker: str, tmp_path: Path) -> None:
    text = (BOOTS / log / "root" / "dmesg.txt").read_text()
    freed = kernel_efi_freed_bytes(text)
    assert freed is not None  # the oracle: the kernel printed its figure in the whole log
    lines = text.splitlines(keepends=True)
    cut = _index(lines, marker)
    path = tmp_path / "kern.log"
    path.write_text("".join(lines[:cut]))
    after_free = cut > _index(lines, "efi: Freeing EFI boot services")
    before_end = cut <= _index(lines, "Freeing unused kernel image (initmem)")
    codes = frozenset({"log_truncated"} if before_end else set())
    ledgers = analyze_contract(path, [freed if after_free else None], codes)
    if not before_end:
        assert "log_truncated" not in {a["code"] for a in ledgers[-1]["anomalies"]}
