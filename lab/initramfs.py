"""The lab guest: a busybox initramfs that captures the boot and hands it back.

``/init`` mounts proc, sysfs, devtmpfs, debugfs and tracefs, stops tracing, and copies
what :func:`memledger.tracer.reader.read_root` reads into ``/capture`` with the same
layout (the kernel log as ``dmesg.txt``). It then sends a gzip'd tar of that tree, in
base64 between two marker lines (:mod:`.handback`), over the second serial port
(ttyS1; the console when there is none) and powers off.

The archive is built with GNU cpio from a staging directory that holds no device node,
so building needs no privilege: /init opens /dev/console itself after mounting devtmpfs.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from memledger.lab.handback import BEGIN, END
from memledger.tracer.sysfs import DMI_FIELDS

__all__ = ("BUSYBOX", "INIT_SCRIPT", "InitramfsError", "build_initramfs")

BUSYBOX = "/bin/busybox"

INIT_SCRIPT = r"""#!/bin/sh
# memledger lab guest init (busybox). Captures this boot for `memledger analyze`.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /capture
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
echo 1 > /proc/sys/kernel/printk
T=/sys/kernel/tracing
[ -w $T/tracing_on ] && echo 0 > $T/tracing_on
for i in $T/instances/*; do [ -w "$i/tracing_on" ] && echo 0 > "$i/tracing_on"; done

C=/capture
save() {  # save SRC DEST: copy a readable file into the capture tree
    [ -f "$1" ] && [ -r "$1" ] || return 0
    mkdir -p "$C/${2%/*}"
    cat "$1" > "$C/$2" 2>/dev/null || rm -f "$C/$2"
}
dmesg -s 33554432 > $C/dmesg.txt
for f in cmdline meminfo zoneinfo iomem bootconfig; do save /proc/$f proc/$f; done
save /proc/sys/kernel/osrelease proc/sys/kernel/osrelease
save /proc/sys/kernel/random/boot_id proc/sys/kernel/random/boot_id
mkdir -p $C/sys/firmware
for d in /sys/firmware/memmap/*; do
    for f in start end type; do save $d/$f ${d#/}/$f; done
done
if [ -d /sys/firmware/efi ]; then
    mkdir -p $C/sys/firmware/efi
    for f in systab fw_platform_size fw_vendor runtime config_table; do
        save /sys/firmware/efi/$f sys/firmware/efi/$f
    done
    for d in /sys/firmware/efi/runtime-map/*; do
        for f in type phys_addr num_pages attribute virt_addr; do save $d/$f ${d#/}/$f; done
    done
fi
for f in @DMI_FIELDS@; do save /sys/class/dmi/id/$f sys/class/dmi/id/$f; done
for f in memory reserved; do save /sys/kernel/debug/memblock/$f sys/kernel/debug/memblock/$f; done
for t in $T $T/instances/*; do
    for f in trace kprobe_events kprobe_profile set_ftrace_filter current_tracer trace_clock \
             buffer_size_kb set_event; do
        save $t/$f ${t#/}/$f
    done
done

cd $C && tar -czf /tmp/capture.tgz . && cd /
out=/dev/ttyS1
[ -c $out ] && stty -F $out raw -echo 2>/dev/null || out=/dev/console
size=$(wc -c < /tmp/capture.tgz)
sum=$(sha256sum /tmp/capture.tgz)
{
    echo  # end the firmware's last console line on this port (see handback.py)
    echo "@BEGIN@ $size"
    base64 /tmp/capture.tgz
    echo "@END@ ${sum%% *}"
} > $out
echo "memledger-lab: capture sent ($size bytes on $out)"
sync
poweroff -f
"""


class InitramfsError(Exception):
    """The initramfs cannot be built (busybox or cpio missing, cpio failed)."""


def init_script() -> str:
    """The text of /init, with the marker lines and the DMI field list filled in."""
    return (INIT_SCRIPT.replace("@BEGIN@", BEGIN).replace("@END@", END)
            .replace("@DMI_FIELDS@", " ".join(DMI_FIELDS)))


def build_initramfs(dest_dir: str | os.PathLike[str], busybox: str = BUSYBOX) -> Path:
    """Build (or reuse) the lab initramfs in ``dest_dir``; return its path.

    The file name carries a hash of /init and of the busybox binary, so a changed script
    or an upgraded busybox gives a new archive and an unchanged one is reused.
    """
    bb = Path(busybox)
    if not bb.is_file():
        raise InitramfsError(f"{busybox}: not found (install Debian's busybox-static)")
    cpio = shutil.which("cpio")
    if cpio is None:
        raise InitramfsError("cpio: not found (install Debian's cpio)")
    script = init_script().encode()
    digest = hashlib.sha256(script + bb.read_bytes()).hexdigest()[:16]
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"memledger-lab-initrd-{digest}.img"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="memledger-initramfs-") as tmp:
        stage = Path(tmp) / "root"
        (stage / "bin").mkdir(parents=True)
        shutil.copy2(bb, stage / "bin" / "busybox")
        (stage / "bin" / "sh").symlink_to("busybox")
        (stage / "init").write_bytes(script)
        (stage / "init").chmod(0o755)
        names = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
        proc = subprocess.run(
            [cpio, "--quiet", "-o", "-H", "newc", "--owner=0:0", "--reproducible"],
            input=("\n".join(names) + "\n").encode(), cwd=stage, capture_output=True, check=False)
        if proc.returncode != 0:
            raise InitramfsError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")
        part = dest / f".{out.name}.{os.getpid()}.tmp"
        with gzip.GzipFile(part, "wb", mtime=0) as gz:
            gz.write(proc.stdout)
        os.replace(part, out)  # atomic: a concurrent builder sees the whole file or none
    return out
