"""The QEMU command line for a lab boot.

The command: q35, OVMF through two pflash drives (CODE read-only, a private copy of
VARS), the console on the first serial port and the capture hand-back on the second.
Under TCG ``-cpu max`` would expose LA57 and the guest would switch to 5-level paging, so
the lab asks for ``max,la57=off``. Which accelerator to use is :mod:`.accel`'s question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from memledger.lab.firmware import Ovmf

__all__ = ("QEMU", "QemuSpec", "qemu_command")

QEMU = "qemu-system-x86_64"


@dataclass(slots=True)
class QemuSpec:
    kernel: Path
    initrd: Path
    append: str
    console_log: Path
    handback_log: Path
    memory: str = "2G"
    smp: int = 2
    accel: str = "tcg"  # "kvm" or "tcg"
    ovmf: Ovmf | None = None  # None: SeaBIOS
    ovmf_vars: Path | None = None  # the private, writable copy of the VARS template
    extra: list[str] = field(default_factory=list)


def qemu_command(spec: QemuSpec, qemu: str = QEMU) -> list[str]:
    """The argv of one lab boot."""
    if spec.accel == "kvm":
        accel, cpu = ["-accel", "kvm"], "host"
    else:
        # One host thread for all vCPUs. Under multi-threaded TCG a vCPU can run a stale
        # translation of code the other vCPU is patching with text_poke_bp(): the guest
        # then dies with "Oops: int3" in sched_clock_tick+0x5 when "sched_clock: Marking
        # stable" flips its static key (seen once on 6.12.117 cloud, mem8g). The matrix
        # runs boots in parallel, so the host's cores stay busy either way.
        accel, cpu = ["-accel", "tcg,thread=single"], "max,la57=off"
    cmd = [qemu, "-machine", "q35", *accel, "-cpu", cpu, "-m", spec.memory,
           "-smp", str(spec.smp), "-display", "none", "-no-reboot", "-monitor", "none",
           "-nic", "none", "-serial", f"file:{spec.console_log}",
           "-serial", f"file:{spec.handback_log}"]
    if spec.ovmf is not None:
        if spec.ovmf_vars is None:
            raise ValueError("OVMF needs a private copy of its VARS file")
        cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={spec.ovmf.code}",
                "-drive", f"if=pflash,format=raw,file={spec.ovmf_vars}"]
    cmd += ["-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", spec.append]
    return cmd + spec.extra
