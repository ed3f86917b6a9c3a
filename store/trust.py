"""What a spool writer may claim, and what the store checks (the trust model).

Whoever can write the spool (root and the memledger group: memledger.tmpfiles) is trusted
to say which host and boot a file describes: the store does not authenticate writers, so
the spool's permissions are the authentication (spool/reader.py refuses files and
directories anyone else could have written). A writer is not trusted with:

- **time**: a capture or batch dated more than MAX_AHEAD past this store's clock is
  refused. A later capture of a boot replaces the stored one; without this rule, a file
  dated 9999 would replace a boot and pin it, every genuine later capture then counted
  "older". Which of two captures of one boot is the later is told by the boot's own clock
  (/proc/uptime) where both have it and their wall clocks agree on when the boot began
  (:func:`is_later`), so a capture dated ahead early in boot cannot pin the boot either;
- **size and text**: caps and checks at parse time (tracer/caps.py, tracer/untrusted.py,
  tracer/capture.py, tracer/runtime.py), so no file can make the store, a log line or a
  metric label unbounded or unstorable; and :func:`check_widths` before the database, so
  a text too long for its column is refused alike on SQLite (which would store it) and
  PostgreSQL (which would fail the whole transaction).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import String, Table

__all__ = ("MAX_AHEAD", "CaptureTime", "Untrusted", "check_not_ahead", "check_widths", "is_later")

# Clocks on a fleet are NTP-synchronised, but a capture taken early in boot may still
# read a real-time clock kept in local time (up to 14 h off, UTC+14) before the first sync.
MAX_AHEAD = timedelta(hours=24)


class Untrusted(ValueError):
    """A claim the store does not accept; the message is one line."""


def check_not_ahead(when: datetime, what: str, now: datetime | None = None) -> None:
    """Raise :class:`Untrusted` when ``when`` is more than MAX_AHEAD past ``now``."""
    now = now or datetime.now(UTC)
    if when > now + MAX_AHEAD:
        raise Untrusted(f"{what} {when:%Y-%m-%dT%H:%M:%SZ} is more than "
                        f"{MAX_AHEAD.total_seconds() / 3600:.0f} h ahead of this store's clock "
                        f"({now:%Y-%m-%dT%H:%M:%SZ}); fix the writer's clock")


class CaptureTime(NamedTuple):
    """When a capture was taken: the writer's wall clock, and the boot's own clock
    (/proc/uptime, seconds since the boot began; None when the capture has none)."""

    captured_at: datetime
    uptime_s: float | None


def is_later(new: CaptureTime, old: CaptureTime) -> bool:
    """True when ``new`` was taken later in the boot than ``old`` (two captures of one
    boot).

    The boot's own clock decides when both captures have it: CLOCK_BOOTTIME only grows
    within a boot, whatever the wall clock does, so a capture taken early in boot from a
    real-time clock in local time (up to 14 h ahead) is still the earlier one. It decides
    only when both wall clocks put the boot's start (captured_at - uptime) within
    MAX_AHEAD of each other, the most two honest clocks of one host can disagree by here:
    a capture claiming an uptime its wall clock cannot have (years) is not believed, and
    the wall clocks decide, as they do for captures without an uptime."""
    if new.uptime_s is not None and old.uptime_s is not None and new.uptime_s != old.uptime_s:
        began_new = new.captured_at - timedelta(seconds=new.uptime_s)
        began_old = old.captured_at - timedelta(seconds=old.uptime_s)
        if abs(began_new - began_old) <= MAX_AHEAD:
            return new.uptime_s > old.uptime_s
    return new.captured_at > old.captured_at


def check_widths(table: Table, row: Mapping[str, Any], caps: Mapping[str, int] | None = None,
                 ) -> None:
    """Raise :class:`Untrusted` for a text in ``row`` longer than its column of ``table``
    holds, or than ``caps`` gives for it (what the kernel can produce, below the width)."""
    for name, value in row.items():
        if not isinstance(value, str) or name not in table.c:
            continue
        kind = table.c[name].type
        limits = [x for x in ((caps or {}).get(name),
                              kind.length if isinstance(kind, String) else None) if x is not None]
        if limits and len(value) > min(limits):
            raise Untrusted(f"{name} {value[:40]!r}… is {len(value)} characters, over the "
                            f"{min(limits)} a kernel can produce")
