"""The lab's boot matrix: which configurations each kernel is booted in (plan pure,
running in parallel at the edge).

Each configuration changes one thing against the kernel's defaults under OVMF, so that
every difference in the ledger has one cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from memledger.lab.accel import choose_accel
from memledger.lab.boot import BootRequest, BootResult, LabError, run_boot
from memledger.lab.initramfs import build_initramfs
from memledger.lab.kernels import CachedKernel
from memledger.lab.qemu import QEMU

__all__ = ("CONFIGS", "ERA_CONFIGS", "BootConfig", "MatrixOutcome", "PlannedBoot", "config_by_name",
           "plan", "run_matrix")


@dataclass(frozen=True, slots=True)
class BootConfig:
    name: str
    description: str
    cmdline: str = ""
    memory: str = "2G"
    firmware: str = "ovmf"
    trace: bool = False


CONFIGS: tuple[BootConfig, ...] = (
    BootConfig("default", "the kernel's defaults under OVMF, 2 GiB"),
    BootConfig("memblock", "memblock=debug: every memblock reservation in the log", "memblock=debug"),
    # efi=debug only ever goes to a lab guest: it makes the kernel keep all boot-services
    # memory, which is why the lab boots it (the firmware map is printed only then) and
    # why nothing that configures real hosts may add it.
    BootConfig("efidebug", "efi=debug memblock=debug: the firmware map printed, nothing freed",
               "efi=debug memblock=debug"),
    BootConfig("crashkernel", "crashkernel=256M", "crashkernel=256M"),
    BootConfig("mem8g", "8 GiB of memory", memory="8G"),
    BootConfig("trace", "memblock=debug plus boot-time function tracing and kprobe events",
               "memblock=debug", trace=True),
    BootConfig("seabios", "the same kernel under SeaBIOS, the non-EFI control", firmware="seabios"),
)


def config_by_name(name: str) -> BootConfig:
    for c in CONFIGS:
        if c.name == name:
            return c
    raise KeyError(f"unknown lab configuration {name!r} ({', '.join(c.name for c in CONFIGS)})")


@dataclass(frozen=True, slots=True)
class PlannedBoot:
    kernel: CachedKernel
    config: BootConfig

    @property
    def name(self) -> str:
        """``<release>-<config>``, the name of the boot's folder."""
        return f"{self.kernel.release}-{self.config.name}"


@dataclass(slots=True)
class MatrixOutcome:
    boot: PlannedBoot
    result: BootResult | None
    error: str | None


# What each era is booted in: every configuration where it shows something new, fewer
# where it repeats an era already booted in full (lab/kernels.py says what each
# era shows). A kernel of no known era gets every configuration.
ERA_CONFIGS: dict[str, tuple[str, ...]] = {
    # 2 GiB leaks deferred pages, 8 GiB does not; efi=debug prints the map the leak is
    # measured against; before v5.13 crashkernel= reserves the low 1 MiB another way.
    "5.10": ("default", "memblock", "efidebug", "crashkernel", "mem8g", "seabios"),
    # The backport frees after deferred init (no leak on 2 GiB) and still below 1 MiB.
    "5.10-lts": ("default", "memblock", "efidebug", "mem8g"),
    "6.1": tuple(c.name for c in CONFIGS),
    "6.12": tuple(c.name for c in CONFIGS),
    "6.12-trixie": ("default", "memblock"),
    "7.x": tuple(c.name for c in CONFIGS),
    "7.x-rc": ("default", "memblock", "efidebug"),
}


def plan(kernels: Iterable[CachedKernel], configs: Iterable[BootConfig] | None = None) -> list[PlannedBoot]:
    """The boots of ``kernels``: ``configs`` on each, else each era's :data:`ERA_CONFIGS`."""
    chosen = list(configs) if configs is not None else None
    boots = []
    for k in kernels:
        if chosen is not None:
            mine = chosen
        else:
            names = ERA_CONFIGS.get(k.era or "", tuple(c.name for c in CONFIGS))
            mine = [c for c in CONFIGS if c.name in names]
        boots += [PlannedBoot(k, c) for c in mine]
    return boots


def run_matrix(boots: list[PlannedBoot], out_dir: Path, cache: Path, jobs: int = 1, smp: int = 2,
               accel: str = "auto", timeout: float = 600.0,
               on_done: Callable[[MatrixOutcome], None] | None = None) -> list[MatrixOutcome]:
    """Run ``boots`` (``jobs`` QEMUs at a time) into ``out_dir/<name>``, in plan order."""

    def one(b: PlannedBoot) -> MatrixOutcome:
        req = BootRequest(kernel=Path(b.kernel.vmlinuz), out=out_dir / b.name, cache=cache,
                          cmdline=b.config.cmdline, trace=b.config.trace, memory=b.config.memory,
                          firmware=b.config.firmware, smp=smp, accel=accel, timeout=timeout,
                          package=b.kernel.as_dict(), config=b.config.name)
        try:
            return MatrixOutcome(b, run_boot(req), None)
        except LabError as exc:
            return MatrixOutcome(b, None, str(exc))

    build_initramfs(cache / "initramfs")  # once, before the boots share it
    if boots:  # probe KVM once (the verdict is cached), not once per parallel boot
        choose_accel(accel, Path(boots[0].kernel.vmlinuz), cache, QEMU)
    outcomes: dict[str, MatrixOutcome] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(one, b) for b in boots]
        for fut in as_completed(futures):
            outcome = fut.result()
            outcomes[outcome.boot.name] = outcome
            if on_done is not None:
                on_done(outcome)
    return [outcomes[b.name] for b in boots]
