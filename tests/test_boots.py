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
from identities import EXPECTED, check_all, load_boot

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
    m = re.search(r"efi: Freeing EFI boot services memory: (\d+)K", (folder / "console.log").read_text())
    expected = int(m.group(1)) * 1024 if m else (0 if "efi=debug" in (folder / "cmdline.txt").read_text()
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
    assert {lab["firmware"] for lab in labs} == {"ovmf", "seabios"}
    assert {lab["config"] for lab in labs} == set(EXPECTED)
    for name, lab in zip(BOOT_NAMES, labs, strict=True):
        assert name == f"{lab['release']}-{lab['config']}"
        assert Path(BOOTS / name / "root" / "proc" / "sys" / "kernel" / "osrelease").read_text().strip() == lab["release"]
