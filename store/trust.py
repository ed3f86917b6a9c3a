"""What a spool writer may claim, and what the store checks (the trust model).

Whoever can write the spool (root and the memledger group: memledger.tmpfiles) is trusted
to say which host and boot a file describes: the store does not authenticate writers, so
the spool's permissions are the authentication (spool/reader.py refuses files and
directories anyone else could have written). A writer is not trusted with:

- **time**: a capture or batch dated more than MAX_AHEAD past this store's clock is
  refused. A later capture of a boot replaces the stored one; without this rule, a file
  dated 9999 would replace a boot and pin it, every genuine later capture then counted
  "older";
- **size and text**: caps and checks at parse time (tracer/untrusted.py, tracer/capture.py,
  tracer/runtime.py), so no file can make the store, a log line or a metric label
  unbounded or unstorable.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ("MAX_AHEAD", "Untrusted", "check_not_ahead")

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
