"""sd_notify(3) through Debian's python3-systemd (``systemd.daemon.notify``).

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. The watchdog interval is
half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) asks, and only when
``$WATCHDOG_PID`` is unset or names this process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

__all__ = ("Notifier",)

log = logging.getLogger("memledger.daemon")


def _sd_notify() -> Callable[[str], object] | None:
    try:
        from systemd import daemon  # Debian: python3-systemd
    except ImportError:
        return None
    send: Callable[[str], object] = daemon.notify
    return send


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._send: Callable[[str], object] | None = None
        self.watchdog_interval: float | None = None
        if not env.get("NOTIFY_SOCKET"):
            return
        self._send = _sd_notify()
        if self._send is None:
            log.warning("NOTIFY_SOCKET is set but python3-systemd is not installed: "
                        "systemd will not hear READY=1 or WATCHDOG=1")
            return
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def notify(self, *assignments: str) -> None:
        """Send ``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1`` … in one datagram."""
        if self._send is not None:
            self._send("\n".join(assignments))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")
