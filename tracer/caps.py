"""The caps on what a spool writer can make the store hold, each defined once (pure).

Every cap is what the kernel can produce, or what a machine can hold; the same cap holds
wherever a figure or text is read from: a capture's manifest, the capture's own files,
an event batch. ``memledger capture`` runs the same checks before it writes a file, so it
never writes one that ``ingest`` refuses. The store's bounded columns are sized from
these constants (store/schema.py), and the store checks each text against its column
before writing (store/trust.py), so SQLite and PostgreSQL refuse the same files.
"""

from __future__ import annotations

from collections.abc import Mapping

from memledger.tracer.sysfs import DMI_FIELDS
from memledger.tracer.untrusted import UntrustedError, check_text

__all__ = (
    "CMDLINE_MAX",
    "DMI_DIR",
    "DNS_NAME_MAX",
    "KSYM_NAME_LEN",
    "MAX_DEPTH",
    "PATH_MAX",
    "PHYS_LIMIT",
    "PRINTK_RECORD_MAX",
    "SYSFS_ATTR_MAX",
    "UTS_LEN",
    "VERSION_MAX",
    "check_host_files",
    "check_member_path",
)

# A release and the kernel's host name: __NEW_UTS_LEN (include/uapi/linux/utsname.h).
UTS_LEN = 64
# A host name given with --hostname may be a DNS name (RFC 1035).
DNS_NAME_MAX = 253
# x86's COMMAND_LINE_SIZE, plus what bootconfig adds to /proc/cmdline (XBC_DATA_MAX,
# 32767) and the space that joins them.
CMDLINE_MAX = 2048 + 32767 + 1
# A sysfs attribute (a DMI string) is at most one page.
SYSFS_ATTR_MAX = 4096
# A kernel symbol: KSYM_NAME_LEN, 512 since b8a94bfb3395 ("kallsyms: increase maximum
# kernel symbol length to 512", v6.1).
KSYM_NAME_LEN = 512
# A kernel log record's text (PRINTKRB_RECORD_MAX).
PRINTK_RECORD_MAX = 1024
PATH_MAX = 4096
# A memledger version string.
VERSION_MAX = 64
# x86-64 physical addresses have at most 52 bits (MAXPHYADDR): no address, and no size of
# memory, reaches 2**52. A sum of 2**11 such values still fits a signed 64-bit integer.
PHYS_LIMIT = 1 << 52
# A capture holds the paths read_tree reads, at most 7 levels deep
# (sys/kernel/debug/tracing/instances/NAME/trace); a real /proc or /sys tree is a few
# dozen levels at most.
MAX_DEPTH = 64

DMI_DIR = "sys/class/dmi/id"
# The files whose text becomes a manifest string or a stored column: (cap, whether
# control characters other than NUL are allowed). A command line may hold a tab.
_HOST_FILES = {
    "proc/sys/kernel/osrelease": (UTS_LEN, False),
    "proc/sys/kernel/hostname": (UTS_LEN, False),
    "proc/cmdline": (CMDLINE_MAX, True),
}


def check_host_files(files: Mapping[str, bytes]) -> None:
    """Raise :class:`UntrustedError` naming the first file over its cap: the release, host
    name and command line files (in bytes, as the kernel counts them, less the trailing
    newline) and the DMI attributes (at most a sysfs page)."""
    for rel, (cap, controls) in _HOST_FILES.items():
        data = files.get(rel)
        if data is None:
            continue
        body = data.strip()
        if len(body) > cap:
            raise UntrustedError(f"{rel} is {len(body)} bytes, over the {cap} a kernel can "
                                 "produce")
        check_text(body.decode("utf-8", errors="replace"), rel, cap, controls=controls)
    for field in DMI_FIELDS:
        rel = f"{DMI_DIR}/{field}"
        data = files.get(rel)
        if data is not None and len(data) > SYSFS_ATTR_MAX:
            raise UntrustedError(f"{rel} is {len(data)} bytes, over the {SYSFS_ATTR_MAX} a "
                                 "sysfs attribute holds")


def check_member_path(parts: list[str], name: str) -> None:
    """Raise :class:`UntrustedError` when a member path (its ``parts``) is deeper than
    MAX_DEPTH or longer than PATH_MAX."""
    if len(parts) > MAX_DEPTH:
        raise UntrustedError(f"member {name[:80]!r}: {len(parts)} levels deep, over the "
                             f"{MAX_DEPTH} a capture holds")
    if len(name) > PATH_MAX:
        raise UntrustedError(f"member {name[:80]!r}: {len(name)} characters long, over "
                             f"PATH_MAX ({PATH_MAX})")
