"""/sys/kernel/boot_params/data: who started this kernel (pure).

The file is the kernel's ``struct boot_params`` (arch/x86/kernel/ksysfs.c, world
readable). Its setup header's ``type_of_loader`` byte, at offset 0x210
(Documentation/arch/x86/boot.rst), holds the boot loader's id in the high nibble and
its version in the low one; id 0xE means "extended": the id is then
0x10 + ``ext_loader_type`` (offset 0x227).

A kernel started by kexec carries 0xD0: kexec-tools sets ``LOADER_TYPE_KEXEC << 4``
and kexec_file_load does the same (arch/x86/kernel/kexec-bzimage64.c,
``params->hdr.type_of_loader = 0x0D << 4``). Such a kernel inherits memory the
firmware's boot services used, already freed by the kernel before it, so its own boot
shows no EFI boot-services reclaim, and that is not a leak.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("Loader", "parse_loader")

TYPE_OF_LOADER = 0x210
EXT_LOADER_TYPE = 0x227
# Documentation/arch/x86/boot.rst, "type_of_loader".
_NAMES = {
    0x0: "lilo", 0x1: "loadlin", 0x2: "bootsect-loader", 0x3: "syslinux", 0x4: "ipxe",
    0x5: "elilo", 0x7: "grub", 0x8: "u-boot", 0x9: "xen", 0xA: "gujin", 0xB: "qemu",
    0xC: "ucbootloader", 0xD: "kexec", 0x11: "minimal-linux-bootloader", 0x12: "ovmf",
    0x13: "barebox",
}


@dataclass(frozen=True, slots=True)
class Loader:
    type_of_loader: int
    name: str          # "kexec", "grub", …, or "unknown-0xNN"

    @property
    def kexec(self) -> bool:
        return self.name == "kexec"


def parse_loader(data: bytes) -> Loader | None:
    """The loader recorded in ``boot_params``; None when the data is too short or
    the byte says "undefined" (0xFF)."""
    if len(data) <= EXT_LOADER_TYPE:
        return None
    t = data[TYPE_OF_LOADER]
    if t == 0xFF:
        return None
    ident = t >> 4
    if ident == 0xE:
        ident = 0x10 + data[EXT_LOADER_TYPE]
    # The EFI stub entered straight from firmware writes 0x21 (x86-stub.c): id 2.
    name = "efi-stub" if t == 0x21 else _NAMES.get(ident, f"unknown-{t:#04x}")
    return Loader(t, name)
