"""``--accel auto`` cannot hang: KVM only when a kernel really prints under it, else TCG.

The QEMU here is a stand-in with the behaviour of the host this was found on (a
Firecracker host's kvm-pvm): under ``-accel kvm`` the guest prints nothing and QEMU runs
until killed; under TCG it prints the kernel banner and, in a lab boot, hands a capture
back on the second serial port. The real host is tried by tests/e2e, whose boots run
with the default ``auto``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from capturegen import targz
from memledger.lab import accel
from memledger.lab.boot import BootRequest, LabError, run_boot
from test_lab import _serial

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

FAKE_QEMU = r'''#!@PYTHON@
"""A QEMU whose KVM cannot run Linux: silent under -accel kvm, a banner under TCG."""
import pathlib, sys, time

args = sys.argv[1:]
with open(@CALLS@, "a") as log:
    log.write(" ".join(args) + "\n")
if args == ["--version"]:
    print("QEMU emulator version 7.2.99 (stand-in)")
    sys.exit(0)
serials = [a.removeprefix("file:") for i, a in enumerate(args) if i and args[i - 1] == "-serial"]
if args[args.index("-accel") + 1] == "kvm":
    time.sleep(60)  # kvm-pvm: nothing on any port, no exit
    sys.exit(0)
pathlib.Path(serials[0]).write_text("[    0.000000] Linux version 7.2.13+deb14-amd64\n")
if len(serials) > 1:
    pathlib.Path(serials[1]).write_text(pathlib.Path(@HANDBACK@).read_text())
'''


@pytest.fixture
def fake_qemu(tmp_path: Path) -> tuple[str, Path]:
    """The stand-in QEMU and the file where it logs every call."""
    calls = tmp_path / "calls.log"
    payload = targz({"./dmesg.txt": b"[    0.000000] Linux version 7.2.13+deb14-amd64\n",
                     "./proc/sys/kernel/osrelease": b"7.2.13+deb14-amd64\n"})
    handback = tmp_path / "handback.txt"
    handback.write_text(_serial(payload))
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(FAKE_QEMU.replace("@PYTHON@", sys.executable).replace("@CALLS@", repr(str(calls)))
                      .replace("@HANDBACK@", repr(str(handback))))
    script.chmod(0o755)
    return str(script), calls


def _kvm_device(tmp_path: Path) -> str:
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    return str(dev)


def test_probe_says_no_when_the_kernel_prints_nothing_under_kvm(fake_qemu: tuple[str, Path],
                                                                  tmp_path: Path) -> None:
    qemu, calls = fake_qemu
    works, why = accel.probe_kvm(tmp_path / "vmlinuz", qemu, limit=1.0)
    assert (works, why) == (False, "a Linux kernel under KVM printed nothing in 1 s")
    assert "-accel kvm" in calls.read_text()


def test_auto_probes_once_per_host_and_keeps_the_verdict(fake_qemu: tuple[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    qemu, calls = fake_qemu
    monkeypatch.setattr(accel, "PROBE_SECONDS", 1.0)
    cache = tmp_path / "cache"
    first = accel.choose_accel("auto", tmp_path / "vmlinuz", cache, qemu, _kvm_device(tmp_path))
    assert (first.accel, first.requested) == ("tcg", "auto")
    assert first.reason == "a Linux kernel under KVM printed nothing in 1 s"
    saved = json.loads((cache / "accel.json").read_text())
    assert saved["accel"] == "tcg" and "stand-in" in saved["host"]
    again = accel.choose_accel("auto", tmp_path / "vmlinuz", cache, qemu, _kvm_device(tmp_path))
    assert again.accel == "tcg" and again.reason.endswith("(cached verdict for this host)")
    assert calls.read_text().count("-accel kvm") == 1  # the second choice did not probe
    no_dev = accel.choose_accel("auto", tmp_path / "vmlinuz", cache, qemu, str(tmp_path / "none"))
    assert no_dev.accel == "tcg" and "absent" in no_dev.reason
    assert accel.choose_accel("kvm", tmp_path / "vmlinuz", cache, qemu).accel == "kvm"


def test_a_silent_kvm_boot_is_booted_again_under_tcg(fake_qemu: tuple[str, Path], tmp_path: Path) -> None:
    """A verdict said KVM (the host changed since): the boot goes silent, is killed after
    the silent limit and runs again under TCG; lab.json says so and the verdict is gone."""
    qemu, calls = fake_qemu
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "accel.json").write_text(json.dumps(
        {"host": accel.host_key(qemu), "accel": "kvm", "reason": "probe passed"}))
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    req = BootRequest(kernel=kernel, out=tmp_path / "boot", cache=cache, firmware="seabios",
                      qemu=qemu, kvm_device=_kvm_device(tmp_path), silent_seconds=1.0, timeout=30)
    result = run_boot(req)
    lab = json.loads((tmp_path / "boot" / "lab.json").read_text())
    assert (result.accel, lab["accel"], lab["accel_requested"]) == ("tcg", "tcg", "auto")
    assert lab["accel_reason"] == "the guest printed nothing under KVM in 1 s; booted again under TCG"
    assert [line.split("-accel ")[1].split()[0] for line in calls.read_text().splitlines()
            if "-accel" in line] == ["kvm", "tcg,thread=single"]
    assert not (cache / "accel.json").exists()
    assert (result.root / "dmesg.txt").read_text().startswith("[    0.000000] Linux version 7.2.13")


def test_an_asked_for_kvm_is_not_second_guessed(fake_qemu: tuple[str, Path], tmp_path: Path) -> None:
    """--accel kvm means KVM: a silent guest runs into the timeout, with the reason."""
    qemu, _ = fake_qemu
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    req = BootRequest(kernel=kernel, out=tmp_path / "boot", cache=tmp_path / "cache",
                      firmware="seabios", qemu=qemu, accel="kvm", timeout=1.5)
    with pytest.raises(LabError, match=r"did not power off within \d+ s under kvm"):
        run_boot(req)
