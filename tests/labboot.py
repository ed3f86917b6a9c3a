"""Lab hosts for the e2e tests: a cached kernel booted by ``memledger lab boot`` (QEMU with
OVMF), its tree given the host's machine id as a fleet machine's root would have it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import MEMLEDGER, qemu_missing
from memledger.lab.kernels import CachedKernel, cached_kernels, default_cache_dir

__all__ = ("CACHE", "boot_id", "cached_kernel", "lab_boot", "osrelease", "rollout_missing")

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


def rollout_missing() -> str | None:
    """Why the lab cannot boot hosts from 5.10 to 6.1 under Prometheus here (the e2e tests
    of a rollout and of the fleet skip with it), or None."""
    if (why := qemu_missing(CACHE)) is not None:
        return why
    if shutil.which("prometheus") is None:
        return "prometheus is not installed (Debian package prometheus)"
    if cached_kernel("5.10") is None or cached_kernel("6.1", "bookworm") is None:
        return (f"the lab cache {CACHE} lacks bullseye's 5.10 or bookworm's 6.1 "
                "(memledger lab kernels --fetch)")
    return None
