"""A fast reader for plain POSIX ustar archives, the kind :func:`memledger.tracer.capture.pack`
writes (pure).

A capture holds 150 to 200 small files (one per /sys/firmware/memmap and EFI runtime-map
attribute), and :mod:`tarfile` spends about 12 µs on each member's header: 2.5 ms of the
7 ms it takes to ingest one capture (BENCHMARKS.md). This reader handles only the plain
case, regular files and directories with octal sizes, UTF-8 names and a valid
checksum, in 0.5 ms, and answers None for anything else: pax or GNU extension
headers, links, devices, sparse files, base-256 numbers, a bad checksum, a cut-short
archive. The caller then reads the archive with :mod:`tarfile`, which stays the
authority for every unusual or broken file.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ("Member", "read_plain")

Member = tuple[str, Literal["file", "dir"], bytes]

_BLOCK = 512
_ZERO = bytes(_BLOCK)
_FILE_TYPES = (b"0", b"\0")
_DIR_TYPE = b"5"
_MAGICS = (b"ustar\x0000", b"ustar  \x00")
_OCTAL = re.compile(rb"[0-7]+")


def _field(header: bytes, start: int, end: int) -> bytes:
    return header[start:end].split(b"\0", 1)[0]


def _octal(raw: bytes) -> int | None:
    text = raw.strip(b" \0")
    if not text:
        return 0
    if _OCTAL.fullmatch(text) is None:  # base-256 or garbage: tarfile decides
        return None
    return int(text, 8)


def read_plain(raw: bytes) -> list[Member] | None:
    """The members of an uncompressed tar, or None when it is not plain ustar."""
    out: list[Member] = []
    pos, size_all = 0, len(raw)
    while pos + _BLOCK <= size_all:
        header = raw[pos:pos + _BLOCK]
        if header == _ZERO:
            return out
        if header[257:265] not in _MAGICS:
            return None
        chksum = _octal(header[148:156])
        if chksum is None or chksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            return None
        size = _octal(header[124:136])
        kind = header[156:157]
        if size is None or kind not in (*_FILE_TYPES, _DIR_TYPE):
            return None
        try:
            name = _field(header, 0, 100).decode()
            prefix = _field(header, 345, 500).decode()
        except UnicodeDecodeError:
            return None
        if prefix:
            name = f"{prefix}/{name}"
        pos += _BLOCK
        if pos + size > size_all:
            return None
        if kind == _DIR_TYPE:
            out.append((name.rstrip("/"), "dir", b""))  # as tarfile names directories
        else:
            out.append((name, "file", raw[pos:pos + size]))
        pos += -(-size // _BLOCK) * _BLOCK
    # No end-of-archive blocks: tarfile accepts an archive that just stops at a member
    # boundary; anything left over is for tarfile to judge.
    return out if pos == size_all else None
