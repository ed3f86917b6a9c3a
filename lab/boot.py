"""One lab boot: build the guest, run QEMU, take back the capture, write the boot folder.

A boot folder holds:

* ``root/``: the capture, in the root-directory layout ``memledger analyze`` reads;
* ``console.log``: the serial console (ttyS0), as the kernel printed it;
* ``cmdline.txt``: the kernel command line the guest saw;
* ``lab.json``: how the boot was made (kernel package, firmware, memory, accelerator,
  the QEMU command, wall time).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from memledger.lab import accel as lab_accel
from memledger.lab import bootargs
from memledger.lab.firmware import FIRMWARES, find_ovmf
from memledger.lab.handback import HandbackError, decode_capture
from memledger.lab.initramfs import build_initramfs
from memledger.lab.qemu import QEMU, QemuSpec, qemu_command

__all__ = ("BootRequest", "BootResult", "LabError", "extract_capture", "run_boot")

# Files a boot folder may hold; everything else in an existing --out is left alone.
_OUTPUTS = ("root", "console.log", "cmdline.txt", "lab.json")
_MAX_CAPTURE_BYTES = 512 << 20


class LabError(Exception):
    """A lab boot failed; the message says where to look."""


@dataclass(slots=True)
class BootRequest:
    kernel: Path
    out: Path
    cache: Path
    cmdline: str = ""  # added to the base console arguments
    trace: bool = False  # add the boot-time tracing arguments
    memory: str = "2G"
    firmware: str = "ovmf"
    smp: int = 2
    accel: str = "auto"
    timeout: float = 600.0
    qemu: str = QEMU
    kvm_device: str = "/dev/kvm"
    silent_seconds: float = lab_accel.SILENT_SECONDS  # under auto-chosen KVM, then TCG
    package: dict[str, Any] | None = None  # the cached kernel's package.json, when known
    config: str | None = None  # the matrix configuration's name, when run from the matrix

    def append(self) -> str:
        return bootargs.join_args(bootargs.BASE_ARGS, self.cmdline,
                                  bootargs.tracing_args() if self.trace else ())


@dataclass(slots=True)
class BootResult:
    out: Path
    root: Path
    wall_seconds: float
    accel: str
    lab: dict[str, Any] = field(default_factory=dict)


def extract_capture(payload: bytes, dest: Path) -> int:
    """Unpack the guest's tar.gz into ``dest``: regular files and folders only, no path
    that leaves ``dest``. Returns the number of files."""
    files = 0
    total = 0
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
        for member in tar:
            rel = PurePosixPath(member.name)
            parts = [p for p in rel.parts if p not in ("", ".")]
            if not parts:
                continue
            if rel.is_absolute() or ".." in parts:
                raise LabError(f"capture holds an unsafe path: {member.name!r}")
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                total += member.size
                if total > _MAX_CAPTURE_BYTES:
                    raise LabError("capture is larger than 512 MiB unpacked")
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with open(target, "wb") as fh:
                    shutil.copyfileobj(src, fh)
                files += 1
    return files


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "")
    except OSError:
        return "(no console output)"
    tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(tail) if tail else "(no console output)"


def _clear(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in _OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def run_boot(req: BootRequest) -> BootResult:
    """Boot ``req.kernel`` under QEMU and write its boot folder to ``req.out``."""
    if req.firmware not in FIRMWARES:
        raise LabError(f"unknown firmware {req.firmware!r} (ovmf or seabios)")
    if not req.kernel.is_file():
        raise LabError(f"{req.kernel}: no such kernel image")
    if shutil.which(req.qemu) is None:
        raise LabError(f"{req.qemu}: not found (install Debian's qemu-system-x86)")
    initrd = build_initramfs(req.cache / "initramfs")
    ovmf = find_ovmf(req.cache) if req.firmware == "ovmf" else None
    choice = lab_accel.choose_accel(req.accel, req.kernel, req.cache, req.qemu, req.kvm_device)
    out = req.out
    _clear(out)
    append = req.append()
    with tempfile.TemporaryDirectory(prefix="memledger-lab-") as tmp:
        tmpd = Path(tmp)
        vars_copy = None
        if ovmf is not None:
            vars_copy = tmpd / "OVMF_VARS.fd"
        spec = QemuSpec(kernel=req.kernel, initrd=initrd, append=append,
                        console_log=out / "console.log", handback_log=tmpd / "handback.log",
                        memory=req.memory, smp=req.smp, accel=choice.accel, ovmf=ovmf,
                        ovmf_vars=vars_copy)
        t0 = time.monotonic()
        while True:
            if ovmf is not None and vars_copy is not None:
                shutil.copyfile(ovmf.vars_template, vars_copy)
            cmd = qemu_command(spec, req.qemu)
            # Under an auto-chosen KVM a guest that stays silent is a KVM that cannot run
            # Linux here: kill it and boot again under TCG (the module doc of .accel).
            silent = req.silent_seconds if choice.requested == "auto" and spec.accel == "kvm" else None
            try:
                returncode, stderr = lab_accel.run_watched(cmd, spec.console_log, req.timeout, silent)
            except subprocess.TimeoutExpired:
                raise LabError(f"the guest did not power off within {req.timeout:.0f} s under "
                               f"{spec.accel}; console: {_tail(out / 'console.log')}") from None
            if returncode is not None:
                break
            lab_accel.forget(req.cache)
            choice = lab_accel.AccelChoice("tcg", "auto", f"the guest printed nothing under KVM in "
                                           f"{req.silent_seconds:.0f} s; booted again under TCG")
            spec.accel = "tcg"
            spec.console_log.unlink(missing_ok=True)
            spec.handback_log.unlink(missing_ok=True)
        wall = time.monotonic() - t0
        if returncode != 0:
            err = (stderr.strip().splitlines() or [""])[-1]
            raise LabError(f"qemu exited with status {returncode}: {err}; console: "
                           f"{_tail(out / 'console.log')}")
        serial = spec.handback_log.read_text(errors="replace") if spec.handback_log.exists() else ""
        try:
            payload = decode_capture(serial)
        except HandbackError as first:
            try:  # the guest falls back to the console when it has no second serial port
                payload = decode_capture((out / "console.log").read_text(errors="replace"))
            except (HandbackError, OSError):
                raise LabError(f"{first}; console: {_tail(out / 'console.log')}") from None
    root = out / "root"
    root.mkdir()
    extract_capture(payload, root)
    cmdline_file = root / "proc" / "cmdline"
    seen = cmdline_file.read_text().strip() if cmdline_file.is_file() else append
    (out / "cmdline.txt").write_text(seen + "\n")
    osrelease = root / "proc" / "sys" / "kernel" / "osrelease"
    lab = {
        "release": osrelease.read_text().strip() if osrelease.is_file() else None,
        "kernel_package": req.package,
        "config": req.config,
        "firmware": req.firmware,
        "ovmf_code": str(ovmf.code) if ovmf else None,
        "memory": req.memory,
        "smp": req.smp,
        "accel": choice.accel,
        "accel_requested": choice.requested,
        "accel_reason": choice.reason,
        "requested_cmdline": append,
        "qemu_argv": [str(a) for a in cmd],
        "wall_seconds": round(wall, 2),
    }
    (out / "lab.json").write_text(json.dumps(lab, indent=2) + "\n")
    return BootResult(out=out, root=root, wall_seconds=wall, accel=choice.accel, lab=lab)
