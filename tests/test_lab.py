"""The lab's pieces that need no QEMU: hand-back decoding, the initramfs, kernel choice,
the QEMU command line, and the CLI's answers to bad input."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest
from capturegen import targz
from conftest import run_cli
from memledger.lab import bootargs
from memledger.lab.boot import LabError, extract_capture
from memledger.lab.firmware import Ovmf
from memledger.lab.handback import BEGIN, END, HandbackError, decode_capture
from memledger.lab.initramfs import build_initramfs, init_script
from memledger.lab.kernels import ERAS, AptState, CachedKernel, choose_default, era_of, release_of
from memledger.lab.matrix import CONFIGS, ERA_CONFIGS, plan
from memledger.lab.qemu import QemuSpec, qemu_command

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

# x86 COMMAND_LINE_SIZE (arch/x86/include/asm/setup.h): longer command lines are cut.
COMMAND_LINE_SIZE = 2048


def _serial(payload: bytes, crlf: bool = True, checksum: str | None = None) -> str:
    """What the guest's /init writes: busybox base64 wraps at 76 columns."""
    body = textwrap.wrap(base64.b64encode(payload).decode(), 76)
    lines = ["[    5.2] Run /init as init process", f"{BEGIN} {len(payload)}", *body,
             f"{END} {checksum or hashlib.sha256(payload).hexdigest()}", "[    7.3] reboot: Power down"]
    return ("\r\n" if crlf else "\n").join(lines)


def test_handback_round_trip_through_a_serial_line() -> None:
    payload = targz({"./dmesg.txt": b"[    0.000000] Linux version 6.12\n"})
    assert decode_capture(_serial(payload)) == payload
    assert decode_capture(_serial(payload, crlf=False)) == payload


def test_handback_found_behind_the_firmwares_console_bytes() -> None:
    """OVMF writes its console to every serial port and ends with no newline; with a 7.x
    EFI stub, which prints nothing, the begin marker shares that line (Debian 7.2.13)."""
    payload = targz({"./dmesg.txt": b"[    0.000000] Linux version 7.2.13+deb14-amd64\n"})
    ovmf = "\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01H"
    serial = ovmf + _serial(payload).split("\r\n", 1)[1]
    assert serial.startswith(ovmf + BEGIN)
    assert decode_capture(serial) == payload


def test_handback_refuses_a_corrupt_or_cut_capture() -> None:
    payload = targz({"./dmesg.txt": b"x" * 5000})
    with pytest.raises(HandbackError, match="checksum mismatch"):
        decode_capture(_serial(payload, checksum="0" * 64))
    cut = _serial(payload).split("\r\n")[:4]
    with pytest.raises(HandbackError, match="cut short"):
        decode_capture("\n".join(cut))
    with pytest.raises(HandbackError, match="no begin marker"):
        decode_capture("[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    flipped = _serial(payload).replace(base64.b64encode(payload).decode()[:8], "AAAAAAAA", 1)
    with pytest.raises(HandbackError):
        decode_capture(flipped)


def test_extract_capture_keeps_files_inside_the_boot_folder(tmp_path: Path) -> None:
    extract_capture(targz({"./proc/cmdline": b"console=ttyS0\n"}), tmp_path)
    assert (tmp_path / "proc" / "cmdline").read_bytes() == b"console=ttyS0\n"
    with pytest.raises(LabError, match="unsafe path"):
        extract_capture(targz({"../escape": b"x"}), tmp_path / "a")
    with pytest.raises(LabError, match="unsafe path"):
        extract_capture(targz({"/etc/escape": b"x"}), tmp_path / "b")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("./dmesg.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
    extract_capture(buf.getvalue(), tmp_path / "c")
    assert not (tmp_path / "c" / "dmesg.txt").exists()


def test_tracing_arguments_fit_the_x86_command_line() -> None:
    line = bootargs.join_args(bootargs.BASE_ARGS, "memblock=debug efi=debug crashkernel=256M",
                              bootargs.tracing_args())
    # OVMF's loader appends " initrd=initrd" (14 bytes); the kernel keeps the rest whole.
    assert len(line) + len(" initrd=initrd") < COMMAND_LINE_SIZE
    kprobes = next(a for a in line.split() if a.startswith("kprobe_event="))
    assert "base=@page_offset_base:x64" in kprobes
    assert "trace_clock=global" in line.split()


def test_join_args_drops_duplicates_and_empties() -> None:
    assert bootargs.join_args(("a=1", "b"), "", "b c", ["a=1"]) == "a=1 b c"


# Kernel package names in each suite's lists on 2026-11-30 (a sample of what apt saw).
APT_NAMES_2026_11_30 = {
    "bullseye": ["linux-image-5.10.0-30-amd64", "linux-image-5.10.0-30-amd64-unsigned",
                 "linux-image-5.10.0-32-amd64", "linux-image-5.10.0-32-cloud-amd64",
                 "linux-image-5.10.0-32-rt-amd64", "linux-image-amd64"],
    "bullseye-security": ["linux-image-5.10.0-43-amd64", "linux-image-5.10.0-46-amd64",
                          "linux-image-5.10.0-46-cloud-amd64", "linux-image-5.10.0-44-amd64",
                          "linux-image-6.1.0-0.deb11.52-amd64"],
    "bookworm": ["linux-image-6.1.0-47-amd64", "linux-image-6.1.0-47-amd64-unsigned",
                 "linux-image-6.1.0-47-cloud-amd64", "linux-image-6.1.0-47-rt-amd64"],
    "bookworm-security": ["linux-image-6.1.0-9-amd64", "linux-image-6.1.0-57-amd64",
                          "linux-image-6.12.99+deb12-cloud-amd64", "linux-image-6.12.100+deb12-amd64",
                          "linux-image-6.12.117+deb12-amd64", "linux-image-6.12.117+deb12-cloud-amd64",
                          "linux-image-6.12.117+deb12-amd64-dbg", "linux-image-6.12-amd64"],
    "trixie": ["linux-image-6.12.107+deb13-amd64", "linux-image-6.12.117+deb13-amd64",
               "linux-image-6.12.117+deb13-cloud-amd64"],
    "sid": ["linux-image-7.2.13+deb14-amd64", "linux-binary-7.2.13+deb14-amd64",
            "linux-binary-7.2.13+deb14-cloud-amd64", "linux-binary-7.1.9+deb14-amd64"],
    "experimental": ["linux-binary-7.3-amd64", "linux-binary-7.3-cloud-amd64", "linux-image-7.3-amd64"],
}


def test_default_kernels_stand_for_every_era() -> None:
    assert choose_default(APT_NAMES_2026_11_30) == [
        ("linux-image-5.10.0-32-amd64", "bullseye"),
        ("linux-image-5.10.0-46-amd64", "bullseye-security"),
        ("linux-image-6.1.0-9-amd64", "bookworm-security"),
        ("linux-image-6.1.0-57-amd64", "bookworm-security"),
        ("linux-image-6.12.117+deb12-amd64", "bookworm-security"),
        ("linux-image-6.12.117+deb12-cloud-amd64", "bookworm-security"),
        ("linux-image-6.12.117+deb13-amd64", "trixie"),
        ("linux-binary-7.2.13+deb14-amd64", "sid"),
        ("linux-binary-7.3-amd64", "experimental")]
    no_cloud_twin = {**APT_NAMES_2026_11_30, "bookworm-security": [
        n for n in APT_NAMES_2026_11_30["bookworm-security"] if n != "linux-image-6.12.117+deb12-cloud-amd64"]}
    assert ("linux-image-6.12.99+deb12-cloud-amd64", "bookworm-security") in choose_default(no_cloud_twin)
    assert choose_default({}) == []


def test_release_and_era_of_package_names() -> None:
    assert release_of("linux-binary-7.2.13+deb14-amd64") == "7.2.13+deb14-amd64"
    assert release_of("linux-image-5.10.0-32-amd64-unsigned") == "5.10.0-32-amd64"
    assert release_of("linux-image-6.1.0-47-rt-amd64") is None
    assert release_of("linux-image-amd64") is None
    assert [era_of(n).name for n in ("linux-image-6.12.117+deb13-amd64",  # type: ignore[union-attr]
                                      "linux-binary-7.3-amd64")] == ["6.12-trixie", "7.x-rc"]
    # Debian's 5.10 carries a4b0bf6a40f3 from ABI 44 (5.10.257-1) on: the ABI decides the era.
    assert [era_of(f"linux-image-5.10.0-{abi}-amd64").name  # type: ignore[union-attr]
            for abi in (9, 32, 43, 44, 46, 100)] == ["5.10", "5.10", "5.10", "5.10-lts", "5.10-lts", "5.10-lts"]
    assert release_of("linux-image-6.1.0-0.deb11.52-amd64") is None


def test_private_apt_sources_use_this_machines_mirrors(tmp_path: Path) -> None:
    """Every lab suite comes from the mirror this machine's apt already uses for its role;
    the system's sources are only read."""
    state = AptState(tmp_path)
    text = state.sources({"archive": "http://mirror.invalid/debian",
                          "security": "http://mirror.invalid/debian-security"})
    suites = [line.split()[-2] for line in text.splitlines()]
    assert suites == ["bullseye", "bullseye-security", "bookworm", "bookworm-security", "trixie", "sid",
                      "experimental"]
    assert all(" http://mirror.invalid/debian-security " in line
               for line in text.splitlines() if "-security" in line)
    assert all(" http://mirror.invalid/debian " in line
               for line in text.splitlines() if "-security" not in line)
    opts = state.options()
    assert f"Dir::Etc::SourceList={tmp_path / 'sources.list'}" in opts
    assert f"Dir::State={tmp_path / 'state'}" in opts


def test_each_era_is_booted_in_the_configurations_that_show_something() -> None:
    def kernel(release: str, era: str | None) -> CachedKernel:
        return CachedKernel(release, f"linux-image-{release}", "1", "amd64", "/v", None, era, None)

    boots = plan([kernel("5.10.0-32-amd64", "5.10"), kernel("5.10.0-46-amd64", "5.10-lts"),
                  kernel("7.3-amd64", "7.x-rc"), kernel("9.9-amd64", None)])
    by_kernel: dict[str, list[str]] = {}
    for b in boots:
        by_kernel.setdefault(b.kernel.release, []).append(b.config.name)
    assert by_kernel["5.10.0-32-amd64"] == ["default", "memblock", "efidebug", "crashkernel", "mem8g", "seabios"]
    assert by_kernel["5.10.0-46-amd64"] == ["default", "memblock", "efidebug", "mem8g"]
    assert by_kernel["7.3-amd64"] == ["default", "memblock", "efidebug"]
    assert by_kernel["9.9-amd64"] == [c.name for c in CONFIGS]
    assert set(ERA_CONFIGS) == {e.name for e in ERAS}
    assert {c for names in ERA_CONFIGS.values() for c in names} == {c.name for c in CONFIGS}


def test_qemu_command_ovmf_uses_read_only_code_and_a_private_vars_copy(tmp_path: Path) -> None:
    ovmf = Ovmf(Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd"))
    spec = QemuSpec(kernel=Path("vmlinuz"), initrd=Path("initrd.img"), append="console=ttyS0",
                    console_log=tmp_path / "console.log", handback_log=tmp_path / "handback.log",
                    ovmf=ovmf, ovmf_vars=tmp_path / "VARS.fd")
    cmd = qemu_command(spec)
    drives = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]
    assert drives == [f"if=pflash,format=raw,readonly=on,file={ovmf.code}",
                      f"if=pflash,format=raw,file={tmp_path / 'VARS.fd'}"]
    assert cmd[cmd.index("-cpu") + 1] == "max,la57=off"
    # Single-threaded TCG: multi-threaded TCG let a vCPU run code mid-text_poke (int3 Oops).
    assert cmd[cmd.index("-accel") + 1] == "tcg,thread=single"
    serials = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-serial"]
    assert serials == [f"file:{tmp_path / 'console.log'}", f"file:{tmp_path / 'handback.log'}"]
    spec.ovmf, spec.accel = None, "kvm"
    seabios = qemu_command(spec)
    assert "-drive" not in seabios
    assert seabios[seabios.index("-cpu") + 1] == "host"
    spec.ovmf, spec.ovmf_vars = ovmf, None
    with pytest.raises(ValueError):
        qemu_command(spec)


def test_init_script_is_valid_busybox_sh() -> None:
    script = init_script()
    assert "@" not in script.replace("@page_offset_base", "")
    assert f"{BEGIN} $size" in script and f"{END} ${{sum%% *}}" in script
    if not Path("/bin/busybox").is_file():
        pytest.skip("/bin/busybox not installed (Debian package busybox-static)")
    proc = subprocess.run(["/bin/busybox", "sh", "-n"], input=script, text=True, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_build_initramfs_holds_init_and_busybox(tmp_path: Path) -> None:
    if not Path("/bin/busybox").is_file() or shutil.which("cpio") is None:
        pytest.skip("busybox-static or cpio not installed")
    img = build_initramfs(tmp_path)
    assert build_initramfs(tmp_path) == img  # reused, not rebuilt
    listing = subprocess.run(f"zcat {img} | cpio -it --quiet", shell=True, capture_output=True,
                             text=True, check=True).stdout.split()
    assert {"init", "bin/busybox", "bin/sh"} <= set(listing)
    init = subprocess.run(f"zcat {img} | cpio -i --quiet --to-stdout init", shell=True,
                          capture_output=True, text=True, check=True).stdout
    assert init == init_script()


def test_lab_boot_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = run_cli("lab", "boot", "--kernel", str(tmp_path / "nope"), "--cache", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no such file" in proc.stderr
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    proc = run_cli("lab", "boot", "--kernel", str(kernel), "--memory", "lots", "--cache", str(tmp_path))
    assert proc.returncode == 2 and "--memory lots" in proc.stderr


def test_lab_kernels_and_matrix_on_an_empty_cache(tmp_path: Path) -> None:
    proc = run_cli("lab", "kernels", "--cache", str(tmp_path))
    assert proc.returncode == 0 and "no kernels" in proc.stdout
    proc = run_cli("lab", "matrix", "--cache", str(tmp_path), "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and proc.stderr.startswith("memledger: error: no kernels")
