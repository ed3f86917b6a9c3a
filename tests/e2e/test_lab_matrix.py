"""Live boots: every cached Debian kernel in every lab configuration, under QEMU.

The kernels come from the lab cache (``memledger lab kernels --fetch``, which ``make e2e``
runs first). A missing tool skips these tests with the reason; on a fresh Debian 12
machine as root ``make test`` installs every tool, so nothing is skipped there. The
identities (tests/identities.py) take the kernel's own output as the oracle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import analyze_json, qemu_missing, run_cli
from identities import EXPECTED, check_all, load_boot
from memledger.lab.kernels import ERAS, CachedKernel, cached_kernels, default_cache_dir
from memledger.lab.matrix import MatrixOutcome, plan, run_matrix

CACHE = default_cache_dir()


def _missing_tool() -> str | None:
    """Why the lab cannot run here, or None."""
    if (why := qemu_missing(CACHE)) is not None:
        return why
    if not Path("/bin/busybox").is_file():
        return "/bin/busybox not installed (Debian package busybox-static)"
    if shutil.which("cpio") is None:
        return "cpio not installed (Debian package cpio)"
    if not cached_kernels(CACHE):
        return f"no kernels in the lab cache {CACHE} (run `memledger lab kernels --fetch`)"
    return None


SKIP_REASON = _missing_tool()
KERNELS: list[CachedKernel] = [] if SKIP_REASON else cached_kernels(CACHE)
BOOTS = plan(KERNELS)
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MatrixOutcome]:
    """Every planned boot, run once per session, as many at a time as there are CPUs."""
    out = tmp_path_factory.mktemp("boots")
    outcomes = run_matrix(BOOTS, out, CACHE, jobs=max(1, os.cpu_count() or 1), smp=2, accel="auto")
    return {o.boot.name: o for o in outcomes}


def test_the_cache_holds_a_kernel_of_every_era() -> None:
    eras = {k.era for k in KERNELS}
    assert eras >= {e.name for e in ERAS}, f"eras without a kernel: {sorted({e.name for e in ERAS} - eras)}"
    releases = [k.release for k in KERNELS]
    assert len([r for r in releases if re.fullmatch(r"6\.1\.0-\d+-amd64", r)]) >= 2
    assert any(r.endswith("-cloud-amd64") for r in releases)


@pytest.mark.parametrize("name", [b.name for b in BOOTS] or ["none"])
def test_live_boot_identities(name: str, matrix: dict[str, MatrixOutcome]) -> None:
    outcome = matrix[name]
    assert outcome.result is not None, outcome.error
    folder = outcome.result.out
    ledger = analyze_json(folder / "root")
    assert isinstance(ledger, dict), "one capture is one boot"
    ran = set(check_all(load_boot(folder), ledger))
    assert EXPECTED[outcome.boot.config.name] <= ran


# The newest kernel of each era, booted as docs/lab.md shows: `memledger lab boot --kernel X`.
NEWEST = {k.era: k for k in KERNELS}


@pytest.mark.parametrize("era", [e.name for e in ERAS])
def test_lab_boot_with_default_flags_boots_each_era(era: str, tmp_path: Path) -> None:
    """`memledger lab boot` with default flags (--accel auto) boots the era's kernel, says
    which accelerator ran and why, and prints the ledger: the kernel's own Freeing line
    where it prints one, else (before a4b0bf6a40f3) an unknown reclaim, not 0."""
    kernel = NEWEST[era]
    out = tmp_path / "boot"
    proc = run_cli("lab", "boot", "--kernel", kernel.release, "--out", str(out), "--cache", str(CACHE))
    assert proc.returncode == 0, proc.stderr
    assert f"booted {kernel.release}" in proc.stderr
    assert f"kernel {kernel.release}" in proc.stdout
    lab = json.loads((out / "lab.json").read_text())
    assert lab["accel_requested"] == "auto" and lab["accel"] in ("kvm", "tcg") and lab["accel_reason"]
    dmesg = (out / "root" / "dmesg.txt").read_text()
    m = re.search(r"efi: Freeing EFI boot services memory: (\d+)K", dmesg)
    ledger = analyze_json(out / "root")
    if m is None:
        assert era == "5.10", "every kernel from the 2026 fix on prints its EFI free"
        assert ledger["efi_boot_services"]["reclaimed_bytes"] is None
        assert "reclaimed" in proc.stdout and "unknown" in proc.stdout
        return
    shown = re.search(r"reclaimed\s+([\d,]+) KiB", proc.stdout)
    assert shown is not None, proc.stdout
    assert int(shown.group(1).replace(",", "")) == int(m.group(1))
    assert ledger["efi_boot_services"]["reclaimed_bytes"] == int(m.group(1)) * 1024
