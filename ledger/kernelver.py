"""Kernel release strings and the version rules the ledger relies on."""

from __future__ import annotations

import re

__all__ = ("at_least", "parse_release")

_REL = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_release(release: str | None) -> tuple[int, int, int] | None:
    """``6.12.117+deb12-amd64`` → ``(6, 12, 117)``; None when unparseable."""
    if not release:
        return None
    m = _REL.match(release.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def at_least(release: str | None, major: int, minor: int) -> bool | None:
    """Whether ``release`` is ``major.minor`` or newer; None when unknown."""
    v = parse_release(release)
    if v is None:
        return None
    return v[:2] >= (major, minor)
