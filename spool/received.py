"""Names of the files a fleet daemon received over HTTP: who sent each is in its name.

A fleet daemon writes each body it accepts into its own spool as ``@SENDER@SHA256``, SENDER
being the authenticated identity ("certificate:CN" or "user:NAME") in hex. Only the daemon's
user and root can write into the spool (spool/reader.py), so a name says who sent the file
as surely as the TLS session did; a file dropped in by a local producer has no sender.
"""

from __future__ import annotations

import re

__all__ = ("SENDER_MAX", "received_name", "sender_of")

# "certificate:" and an X.509 common name (at most 64 characters), with room to spare; its
# hex, the digest and the spool's suffixes stay within a file name's 255 bytes.
SENDER_MAX = 80
_NAME = re.compile(r"^@((?:[0-9a-f]{2})+)@([0-9a-f]{64})(?:\.\d+)?$")


def received_name(sender: str, sha256: str) -> str:
    """The spool name of a body ``sender`` sent, whose sha256 is ``sha256``."""
    raw = sender.encode()
    if not sender or len(sender) > SENDER_MAX:
        raise ValueError(f"a sender is 1 to {SENDER_MAX} characters")
    return f"@{raw.hex()}@{sha256}"


def sender_of(name: str) -> str | None:
    """Who sent the spool file ``name`` (None: a local producer wrote it)."""
    m = _NAME.match(name)
    if m is None:
        return None
    try:
        return bytes.fromhex(m.group(1)).decode()
    except UnicodeDecodeError:
        return None
