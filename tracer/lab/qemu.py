"""The QEMU command line for a lab boot, and whether KVM really works here.

The command follows ../shared/lab-notes.md: q35, OVMF through two pflash drives (CODE
read-only, a private copy of VARS), the console on the first serial port and the capture
hand-back on the second. Under TCG ``-cpu max`` would expose LA57 and the guest would
switch to 5-level paging, so the lab asks for ``max,la57=off``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from memledger.tracer.lab.firmware import Ovmf

__all__ = ("QEMU", "QemuSpec", "kvm_usable", "qemu_command", "resolve_accel")

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


@cache
def kvm_usable(qemu: str = QEMU, timeout: float = 30.0) -> bool:
    """True when a guest really runs under KVM here, not only when /dev/kvm exists.

    Some hosts expose a /dev/kvm that fails on the first instruction it must emulate
    (a Firecracker-style host's kvm-pvm: "KVM internal error. Suberror: 1"). The probe
    starts SeaBIOS with no boot device; with a working KVM it prints "No bootable device"
    on its debug port and the reboot ends QEMU.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which(qemu) is None:
        return False
    with tempfile.TemporaryDirectory(prefix="memledger-kvm-probe-") as tmp:
        debug = Path(tmp) / "debugcon.log"
        cmd = [qemu, "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "64",
               "-display", "none", "-nodefaults", "-no-reboot", "-boot", "reboot-timeout=0",
               "-chardev", f"file,id=dbg,path={debug}", "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return False
        text = debug.read_text(errors="replace") if debug.exists() else ""
        return (proc.returncode == 0 and "No bootable device" in text
                and "KVM internal error" not in proc.stderr)


def resolve_accel(accel: str, qemu: str = QEMU) -> str:
    """``auto`` becomes ``kvm`` when KVM really works and ``tcg`` otherwise."""
    if accel == "auto":
        return "kvm" if kvm_usable(qemu) else "tcg"
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"unknown accelerator {accel!r} (auto, kvm or tcg)")
    return accel
