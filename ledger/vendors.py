"""One name per firmware vendor (pure).

The same firmware names itself differently in each place memledger reads: OVMF's DMI
``bios_vendor`` is "EFI Development Kit II / OVMF" while its EFI system table says
"EDK II"; AMI's DMI string changed from "American Megatrends Inc." to "American
Megatrends International, LLC." in 2019. :func:`vendor_name` maps each known spelling to
one name, so that ``compare --where firmware_vendor=…`` and the fleet metrics group one
vendor's boots together. The raw strings stay in the ledger document
(``firmware.dmi.bios_vendor``, ``firmware.efi_vendor``).

A vendor not listed keeps its own string, less a trailing company form ("Inc.",
"Corp.", "Ltd", …) and surrounding blanks.

The table is written here rather than taken from a library: no maintained package maps
firmware vendor strings (hwdata's pci.ids and usb.ids name device vendors by numeric id,
and DMI vendor strings have none).
"""

from __future__ import annotations

import re

__all__ = ("KNOWN", "vendor_name")

# (pattern matched against the start of the case-folded string, the one name)
KNOWN: tuple[tuple[str, str], ...] = (
    (r"edk ii|edk2|efi development kit ii|ovmf|ubuntu distribution of edk ii", "EDK II"),
    (r"american megatrends|ami\b", "American Megatrends"),
    (r"insyde", "Insyde"),
    (r"phoenix", "Phoenix"),
    (r"dell", "Dell"),
    (r"hewlett packard enterprise|hpe\b", "HPE"),
    (r"hewlett-packard|hp\b", "HP"),
    (r"lenovo", "Lenovo"),
    (r"intel", "Intel"),
    (r"microsoft", "Microsoft"),
    (r"vmware", "VMware"),
    (r"innotek", "innotek (VirtualBox)"),
    (r"seabios", "SeaBIOS"),
    (r"amazon", "Amazon EC2"),
    (r"google", "Google"),
    (r"xen\b", "Xen"),
    (r"apple", "Apple"),
    (r"coreboot", "coreboot"),
    (r"u-boot|das u-boot", "U-Boot"),
)
_KNOWN = [(re.compile(p), name) for p, name in KNOWN]
_COMPANY = re.compile(r"[\s,]+(inc|corp|corporation|co|ltd|limited|llc|gmbh|s\.?a|ag)\.?$",
                      re.IGNORECASE)


def vendor_name(raw: str | None) -> str | None:
    """The one name of the vendor that ``raw`` spells (None stays None: unknown)."""
    if raw is None:
        return None
    text = " ".join(raw.split())
    if not text:
        return None
    folded = text.casefold()
    for pattern, name in _KNOWN:
        if pattern.match(folded):
            return name
    while (m := _COMPANY.search(text)) and m.start() > 0:
        text = text[:m.start()]
    return text
