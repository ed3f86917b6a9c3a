"""A real Debian 12 guest for the live-collection test: built with debootstrap, booted by
GRUB under OVMF, running memledger's units under systemd.

The image is built in two cached layers under ``CACHE/guest/``:

``rootfs-KEY/``
    debootstrap of bookworm with systemd, python3, python3-bpfcc, kexec-tools,
    qemu-guest-agent, the stock kernel and its matching linux-headers (bcc compiles
    against them), GRUB's EFI modules and update-grub. KEY hashes the package list and
    this recipe, so it is rebuilt only when they change (about 2 minutes).

``image-KEY.raw``
    a GPT disk: an ESP holding GRUB (grub-mkimage, with a tiny embedded config that
    finds the root file system by UUID) and an ext4 root made from a copy of the rootfs
    with ``mkfs.ext4 -d`` (no loop device or mount needed), plus two Debian packages of
    this checkout in ``/var/cache/memledger-e2e/`` (``scripts/build-deb``): the
    checkout's version, and a newer build of the same source for the upgrade. KEY
    adds the hashes of the checkout's tracked files, but for the folders no package
    file comes from (tests, bench, docs).

    Its first boot is the *provisioning* boot, done like an operator would on a host:
    ``apt-get install`` of the first package (its maintainer scripts create the user and
    directories, and enable and start both units; what ``systemctl is-active`` said
    after it is kept in ``/var/lib/memledger-e2e/installed``), then
    ``memledger boot-setup --apply --append crashkernel=256M``, which writes the GRUB
    drop-in and runs the real update-grub (grub-mkconfig, grub-probe on /dev/vda2), and
    the guest powers off. Every later boot goes through the grub.cfg that update-grub
    wrote. Tests boot copies of the provisioned image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from memledger.lab.boot import LabError
from memledger.lab.firmware import Ovmf
from memledger.lab.guestvm import GuestVM

__all__ = (
    "DEBS",
    "GUEST_PACKAGES",
    "ROOT_UUID",
    "build_debs",
    "build_rootfs",
    "guest_image",
    "provision_boot",
    "tool_missing",
)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
GUEST_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "python3", "python3-venv", "python3-bpfcc",
    "python3-systemd", "kexec-tools", "qemu-guest-agent", "linux-image-amd64",
    "linux-headers-amd64", "grub-efi-amd64-bin", "grub2-common", "initramfs-tools",
    "procps", "kmod", "iproute2", "ca-certificates",
)
# Bump when the recipe below changes in a way the package list does not show.
RECIPE = "guest-2"
ROOT_UUID = "6d656d6c-6564-4765-a200-000000000001"
ESP_SECTORS = 131072          # 64 MiB
ROOT_START = 2048 + ESP_SECTORS
DISK_BYTES = 4 << 30
HOST_TOOLS = ("debootstrap", "mkfs.ext4", "mkfs.vfat", "mcopy", "mmd", "sfdisk", "chroot", "git",
              "dpkg-buildpackage", "dh_virtualenv")
_GRUB_MODULES = ("part_gpt", "ext2", "fat", "search", "search_fs_uuid", "normal", "linux",
                 "configfile", "echo", "test", "gzio", "efi_gop", "all_video", "serial",
                 "terminal", "boot")


def tool_missing() -> str | None:
    """The first host tool the build needs that is not installed, if any."""
    for tool in HOST_TOOLS:
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return tool
    return None


def _run(cmd: Sequence[str], log: Path, **kw: object) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, check=False,
                              **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise LabError(f"{cmd[0]} failed (exit {proc.returncode}); {log}: " + " | ".join(tail))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _chroot_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
            "LANG": "C.UTF-8", "HOME": "/root"}


def build_rootfs(cache: Path, log: Path) -> Path:
    """The debootstrapped and configured root file system (cached)."""
    key = _key(SUITE, MIRROR, GUEST_PACKAGES, RECIPE)
    final = cache / "guest" / f"rootfs-{key}"
    if (final / ".memledger-complete").exists():
        return final
    work = final.with_name(final.name + ".tmp")
    if work.exists():
        shutil.rmtree(work)
    work.parent.mkdir(parents=True, exist_ok=True)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(GUEST_PACKAGES)}",
          SUITE, str(work), MIRROR], log)
    _configure(work, log)
    (work / ".memledger-complete").write_text(key + "\n")
    work.rename(final)
    return final


def _configure(root: Path, log: Path) -> None:
    _write(root / "etc/hostname", "memledger-guest\n")
    _write(root / "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 memledger-guest\n")
    _write(root / "etc/fstab", f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n")
    # systemd makes and commits the machine id on the first (provisioning) boot.
    _write(root / "etc/machine-id", "")
    _write(root / "etc/systemd/network/80-dhcp.network",
           "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n")
    # The serial console carries the kernel log; GRUB waits for nothing.
    _write(root / "etc/default/grub",
           'GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_DISTRIBUTOR="Debian"\n'
           'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0,115200"\nGRUB_CMDLINE_LINUX=""\n'
           "GRUB_TERMINAL=console\nGRUB_DISABLE_OS_PROBER=true\n")
    env = _chroot_env()
    _run(["chroot", str(root), "systemctl", "enable", "systemd-networkd.service"], log, env=env)
    _run(["chroot", str(root), "passwd", "--lock", "root"], log, env=env)
    # GRUB for the ESP: the modules go beside grub.cfg, as grub-install would put them.
    shutil.copytree(root / "usr/lib/grub/x86_64-efi", root / "boot/grub/x86_64-efi",
                    dirs_exist_ok=True)
    early = root / "boot/grub/early.cfg"
    _write(early, f"search --no-floppy --fs-uuid --set=root {ROOT_UUID}\n"
                  "set prefix=($root)/boot/grub\n")
    _run(["chroot", str(root), "grub-mkimage", "-O", "x86_64-efi", "-o", "/boot/grub/BOOTX64.EFI",
          "-c", "/boot/grub/early.cfg", "-p", "/boot/grub", *_GRUB_MODULES], log, env=env)
    _run(["chroot", str(root), "apt-get", "clean"], log, env=env)


# Folders that no package file comes from: a change in them keeps the image.
_NOT_PACKAGED = frozenset({"tests", "bench", "docs"})


def _source_key(checkout: Path) -> str:
    """The hashes of the checkout's tracked files as they are in the work tree (``git
    stash create`` commits them, changed or not, without touching anything), but for
    _NOT_PACKAGED."""
    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise LabError(f"{checkout}: git {args[0]}: {r.stderr.strip()}")
        return r.stdout.strip()
    top = git("ls-tree", git("stash", "create") or "HEAD").splitlines()
    return _key([line for line in top if line.split("\t", 1)[1] not in _NOT_PACKAGED])


# In the guest: the checkout's package in DEBS/first, a newer build of the same source
# in DEBS/newer.
DEBS = "/var/cache/memledger-e2e"
NEWER = "+1"


def build_debs(checkout: Path, out: Path, log: Path) -> tuple[Path, Path]:
    """The checkout's package and a newer build of it (its version + NEWER)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    script = checkout / "scripts" / "build-deb"
    changelog = checkout / "deploy/debian/changelog"
    version = subprocess.run(["dpkg-parsechangelog", "-l", str(changelog), "-S", "Version"],
                             capture_output=True, text=True).stdout.strip()
    if not version:
        raise LabError(f"{changelog}: no version")
    _run([str(script), str(out)], log)
    _run([str(script), str(out), version + NEWER], log)
    return out / f"memledger_{version}_amd64.deb", out / f"memledger_{version}{NEWER}_amd64.deb"


def _first_boot_grub(root: Path) -> None:
    """A hand-written grub.cfg for the provisioning boot only; update-grub replaces it."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise LabError(f"{root}/boot: no kernel")
    release = kernels[-1].name.removeprefix("vmlinuz-")
    _write(root / "boot/grub/grub.cfg",
           f"search --no-floppy --fs-uuid --set=root {ROOT_UUID}\n"
           f"linux /boot/vmlinuz-{release} root=UUID={ROOT_UUID} ro console=ttyS0,115200\n"
           f"initrd /boot/initrd.img-{release}\nboot\n")


_PROVISION_UNIT = f"""\
[Unit]
Description=memledger e2e: install memledger like an operator would, then power off
ConditionPathExists=!/var/lib/memledger-e2e/provisioned
After=local-fs.target

[Service]
Type=oneshot
StandardOutput=journal+console
TimeoutStartSec=1200
Environment=DEBIAN_FRONTEND=noninteractive
ExecStart=/bin/sh -c 'apt-get install -y {DEBS}/first/memledger_*.deb'
ExecStart=/bin/mkdir -p /var/lib/memledger-e2e
ExecStart=/bin/sh -c 'systemctl is-active memledger.service memledger-collector.service \
    > /var/lib/memledger-e2e/installed; true'
ExecStart=/usr/bin/memledger boot-setup --apply --append crashkernel=256M
ExecStart=/bin/touch /var/lib/memledger-e2e/provisioned
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
"""


def _stage_memledger(root: Path, debs: tuple[Path, Path], log: Path) -> None:
    """The packages into the guest, and the unit that installs the first one."""
    for where, deb in zip(("first", "newer"), debs, strict=True):
        (root / DEBS.lstrip("/") / where).mkdir(parents=True, exist_ok=True)
        shutil.copy2(deb, root / DEBS.lstrip("/") / where / deb.name)
    _write(root / "etc/systemd/system/memledger-e2e-provision.service", _PROVISION_UNIT)
    _run(["chroot", str(root), "systemctl", "enable", "memledger-e2e-provision.service"], log,
         env=_chroot_env())


def _disk(rootfs: Path, out: Path, log: Path) -> None:
    """GPT disk image: ESP (GRUB) + ext4 root, built without loop devices."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as fh:
        fh.truncate(DISK_BYTES)
    layout = (
        "label: gpt\n"
        f"start=2048, size={ESP_SECTORS}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\n"
        f"start={ROOT_START}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n"
    )
    _run(["sfdisk", "--quiet", str(tmp)], log, input=layout.encode())
    table = json.loads(subprocess.run(["sfdisk", "--json", str(tmp)], capture_output=True,
                                      check=True).stdout)
    root_sectors = table["partitiontable"]["partitions"][1]["size"]
    with tempfile.TemporaryDirectory(dir=out.parent) as td:
        esp, ext4 = Path(td) / "esp.img", Path(td) / "root.img"
        _run(["mkfs.vfat", "-C", "-n", "ESP", str(esp), str(ESP_SECTORS // 2)], log)
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], log, env=env)
        _run(["mcopy", "-i", str(esp), str(rootfs / "boot/grub/BOOTX64.EFI"),
              "::/EFI/BOOT/BOOTX64.EFI"], log, env=env)
        _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", ROOT_UUID, "-d", str(rootfs),
              str(ext4), f"{root_sectors // 2}k"], log)
        for part, start in ((esp, 2048), (ext4, ROOT_START)):
            _run(["dd", f"if={part}", f"of={tmp}", "bs=1M", f"seek={start * 512}",
                  "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"], log)
    tmp.rename(out)


def guest_image(cache: Path, checkout: Path, provision: Callable[[Path], None],
                log: Path) -> Path:
    """The provisioned guest disk for this checkout (cached by content)."""
    rootfs = build_rootfs(cache, log)
    key = _key(rootfs.name, _source_key(checkout), _PROVISION_UNIT, ROOT_UUID)
    image = cache / "guest" / f"image-{key}.raw"
    if image.exists():
        return image
    for old in (cache / "guest").glob("image-*.raw"):
        old.unlink()  # one image at a time: each is a 4 GiB sparse file
    debs = build_debs(checkout, cache / "guest" / "debs", log)
    staging = cache / "guest" / "staging"
    if staging.exists():
        shutil.rmtree(staging)
    _run(["cp", "-a", "--reflink=auto", str(rootfs), str(staging)], log)
    try:
        _stage_memledger(staging, debs, log)
        _first_boot_grub(staging)
        raw = image.with_name(image.name + ".unprovisioned")
        _disk(staging, raw, log)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    provision(raw)
    (cache / "guest" / "provision-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    raw.rename(image)
    return image


def provision_boot(ovmf: Ovmf, workdir: Path, timeout: float = 900.0) -> Callable[[Path], None]:
    """The provisioning boot: boot once, let memledger-e2e-provision.service run
    ``boot-setup --apply`` and power off; its console must show update-grub ran."""
    def boot(image: Path) -> None:
        if workdir.exists():
            shutil.rmtree(workdir)
        vm = GuestVM(image, workdir, ovmf)
        vm.start()
        try:
            vm.wait_exit(timeout)
        finally:
            vm.stop()
        console = vm.console.read_text(errors="replace")
        if "ran update-grub" not in console:
            raise LabError(f"provisioning boot: no 'ran update-grub' on the console; "
                           f"{vm.console}: {vm.console_tail()}")
    return boot
