"""Durations and sizes as the command-line options write them (Prometheus-style)."""

from __future__ import annotations

import re

__all__ = ("parse_duration", "parse_size")


def parse_duration(text: str) -> float:
    """Prometheus-style durations: ``0``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)?", text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration (like 90s, 15m, 12h, 7d)")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2) or "s"]
    return int(m.group(1)) * unit


def parse_size(text: str) -> int:
    """``1048576``, ``512KiB``, ``64MiB``, ``1GiB`` (K/M/G and KB/MB/GB mean the same)."""
    m = re.fullmatch(r"(\d+)\s*(?:([KMG])i?B?|B)?", text.strip(), re.IGNORECASE)
    if m is None:
        raise ValueError(f"{text!r} is not a size (like 64MiB)")
    shift = {None: 0, "K": 10, "M": 20, "G": 30}[(m.group(2) or "").upper() or None]
    return int(m.group(1)) << shift
