"""Which accelerator a lab boot runs under, decided so that it cannot hang.

``/dev/kvm`` existing, and even answering a firmware-only probe, does not mean a Linux
guest runs under it: on a Firecracker-style host whose KVM is kvm-pvm, SeaBIOS reaches
"No bootable device" under ``-accel kvm`` but a kernel prints nothing at all, under
OVMF and under SeaBIOS, and QEMU keeps running until it is killed. So ``auto`` boots the
kernel itself under KVM (SeaBIOS, no initramfs, an early console) and takes KVM only when
its ``Linux version`` banner reaches the serial port within :data:`PROBE_SECONDS`. The
verdict is kept per host (machine id, host kernel, QEMU version) in the lab cache, and a
boot that still prints nothing under KVM in its first :data:`SILENT_SECONDS` is killed
and run again under TCG (:func:`run_watched` tells the caller).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ("PROBE_SECONDS", "SILENT_SECONDS", "AccelChoice", "choose_accel", "forget", "host_key",
           "probe_kvm", "run_watched")

PROBE_SECONDS = 20.0  # SeaBIOS + decompression + the banner take about 2 s under a working KVM
SILENT_SECONDS = 60.0  # OVMF under a working KVM reaches the kernel's console in under 10 s
_VERDICT_FILE = "accel.json"
_BANNER = b"Linux version"


@dataclass(frozen=True, slots=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    requested: str  # "auto", "kvm" or "tcg"
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def host_key(qemu: str) -> str:
    """What a cached verdict holds for: this machine, its kernel, this QEMU."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = platform.node()
    try:
        version = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30,
                                 check=False).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        version = "unknown"
    return f"{machine} {platform.release()} {version}"


def run_watched(cmd: list[str], console: Path, timeout: float,
                silent_limit: float | None = None) -> tuple[int | None, str]:
    """Run QEMU to its end; ``(returncode, stderr)``.

    The return code is None when the guest wrote nothing to ``console`` within
    ``silent_limit`` seconds (QEMU is then killed); TimeoutExpired when it ran past
    ``timeout`` seconds.
    """
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        t0 = time.monotonic()
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - t0
                if silent_limit is not None and elapsed > silent_limit:
                    if not _has_output(console):
                        proc.kill()
                        proc.wait()
                        return None, ""
                    silent_limit = None
                if elapsed > timeout:
                    proc.kill()
                    proc.wait()
                    raise subprocess.TimeoutExpired(cmd, timeout)
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace")


def _has_output(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def probe_kvm(kernel: Path, qemu: str, limit: float = PROBE_SECONDS) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM until its banner appears on the serial port (or ``limit``)."""
    with tempfile.TemporaryDirectory(prefix="memledger-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        cmd = [qemu, "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
               "-display", "none", "-nodefaults", "-no-reboot", "-serial", f"file:{console}",
               "-kernel", str(kernel),
               "-append", "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1"]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while time.monotonic() - t0 < limit:
                if console.is_file() and _BANNER in console.read_bytes():
                    return True, (f"a {kernel.name} probe boot printed its banner under KVM in "
                                  f"{time.monotonic() - t0:.1f} s")
                if proc.poll() is not None:
                    err = (proc.stderr.read().decode(errors="replace").strip().splitlines()  # type: ignore[union-attr]
                           or [f"exit status {proc.returncode}"])[-1]
                    return False, f"QEMU under KVM failed: {err}"
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        return False, f"a Linux kernel under KVM printed nothing in {limit:.0f} s"


def _cached(cache: Path, key: str) -> AccelChoice | None:
    try:
        data = json.loads((cache / _VERDICT_FILE).read_text())
        if data.get("host") == key and data.get("accel") in ("kvm", "tcg"):
            return AccelChoice(data["accel"], "auto", f"{data['reason']} (cached verdict for this host)")
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    return None


def _remember(cache: Path, key: str, choice: AccelChoice) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    part = cache / f".{_VERDICT_FILE}.{os.getpid()}"
    part.write_text(json.dumps({"host": key, "accel": choice.accel, "reason": choice.reason,
                                "probed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    os.replace(part, cache / _VERDICT_FILE)


def forget(cache: Path) -> None:
    """Drop the cached verdict (a KVM boot went silent: the host changed under it)."""
    (cache / _VERDICT_FILE).unlink(missing_ok=True)


def choose_accel(requested: str, kernel: Path, cache: Path, qemu: str,
                 kvm_device: str = "/dev/kvm") -> AccelChoice:
    """``kvm`` or ``tcg`` as asked; for ``auto``, KVM only when a kernel really runs under it."""
    if requested in ("kvm", "tcg"):
        return AccelChoice(requested, requested, f"--accel {requested}")
    if requested != "auto":
        raise ValueError(f"unknown accelerator {requested!r} (auto, kvm or tcg)")
    if not os.access(kvm_device, os.R_OK | os.W_OK):
        return AccelChoice("tcg", "auto", f"{kvm_device} is absent or not accessible")
    key = host_key(qemu)
    if (hit := _cached(cache, key)) is not None:
        return hit
    works, why = probe_kvm(kernel, qemu, PROBE_SECONDS)
    choice = AccelChoice("kvm" if works else "tcg", "auto", why)
    _remember(cache, key, choice)
    return choice
