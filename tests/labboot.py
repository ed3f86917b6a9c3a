"""Lab hosts for the e2e tests: a cached kernel booted by ``memledger lab boot`` (QEMU with
OVMF), its tree given the host's machine id as a fleet machine's root would have it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import MEMLEDGER
from memledger.lab.kernels import CachedKernel, cached_kernels, default_cache_dir

__all__ = ("CACHE", "boot_id", "cached_kernel", "lab_boot", "osrelease")

CACHE = default_cache_dir()


def cached_kernel(era: str, suite: str | None = None) -> CachedKernel | None:
    """The lab cache's kernel of ``era`` (and ``suite``), if it was fetched."""
    return next((k for k in cached_kernels(CACHE)
                 if k.era == era and (suite is None or k.suite == suite)), None)


def lab_boot(kernel: str, memory: str, machine_id: str, out: Path, cmdline: str = "") -> Path:
    """Boot ``kernel`` with ``memory`` (and ``cmdline`` added) into the boot folder ``out``;
    the boot's tree, with ``machine_id`` as its etc/machine-id (the guest has none of its
    own)."""
    extra = ["--cmdline", cmdline] if cmdline else []
    proc = subprocess.run(
        [MEMLEDGER, "lab", "boot", "--kernel", kernel, "--memory", memory, "--out", str(out),
         "--cache", str(CACHE), *extra], capture_output=True, text=True, timeout=900,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = out / "root"
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/machine-id").write_text(machine_id + "\n")
    return root


def boot_id(root: Path) -> str:
    """The boot id the guest kernel made (its /proc/sys/kernel/random/boot_id)."""
    return (root / "proc/sys/kernel/random/boot_id").read_text().strip()


def osrelease(root: Path) -> str:
    """The guest kernel's release (its /proc/sys/kernel/osrelease)."""
    return (root / "proc/sys/kernel/osrelease").read_text().strip()
