"""Decode the capture a lab guest sends back over a serial port (pure).

The guest writes::

    memledger-capture-begin SIZE
    <base64 of a gzip'd tar, in lines>
    memledger-capture-end SHA256

The serial line may add carriage returns and the console may interleave other lines
before and after; the payload itself is checked against SIZE and SHA256.

The hand-back port is not the guest's alone: OVMF sends its console to every serial port,
so the file starts with the firmware's screen-clearing escapes (``ESC[2J ESC[01;01H …``)
and no newline after them. Older EFI stubs printed "EFI stub: Loaded initrd …" lines
there, which happened to end that line; Debian's 7.x kernels print nothing, and the
begin marker then shares its line with the firmware's bytes. So a marker counts wherever
it starts in its line, and what stands before it is not part of the capture.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

__all__ = ("BEGIN", "END", "HandbackError", "decode_capture")

BEGIN = "memledger-capture-begin"
END = "memledger-capture-end"


class HandbackError(Exception):
    """No complete, intact capture in the serial output."""


def _from_marker(line: str) -> str:
    """The line from its marker on, when it holds one after other bytes (firmware output)."""
    for marker in (BEGIN, END):
        at = line.find(marker)
        if at > 0:
            return line[at:]
    return line


def decode_capture(text: str) -> bytes:
    """The tar.gz payload of the last complete capture in ``text``."""
    lines = [_from_marker(ln.strip("\r\x00 ")) for ln in text.splitlines()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith(BEGIN + " ")]
    if not starts:
        raise HandbackError("the guest sent no capture (no begin marker)")
    start = starts[-1]
    try:
        size = int(lines[start].split()[1])
    except (IndexError, ValueError):
        raise HandbackError(f"line {start + 1}: bad begin marker: {lines[start]!r}") from None
    for end in range(start + 1, len(lines)):
        if lines[end].startswith(END + " ") or lines[end] == END:
            break
    else:
        raise HandbackError(f"capture cut short: begin marker at line {start + 1}, no end marker "
                            "(did the guest crash or time out?)")
    want = lines[end][len(END):].strip()
    try:
        payload = base64.b64decode("".join(lines[start + 1:end]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HandbackError(f"lines {start + 2}-{end}: bad base64: {exc}") from None
    if len(payload) != size:
        raise HandbackError(f"capture is {len(payload)} bytes, the guest sent {size}")
    got = hashlib.sha256(payload).hexdigest()
    if got != want:
        raise HandbackError(f"capture checksum mismatch: sha256 {got}, the guest sent {want}")
    return payload
