"""The log edge: every record the daemon and the collector write is one line.

A journal reader or a log shipper splits records at newlines, and a terminal running
``journalctl`` acts on escape sequences; data in a message (a host name, a kernel
release, a database's error that quotes a value, an exception's text) holds either.
:class:`OneLineFormatter` formats the whole record, traceback included, and shows every
control character in it escaped (``\\n``, ``\\x1b``): a record is one line, and no
data can forge another or reach the reader's terminal.
"""

from __future__ import annotations

import logging

from memledger.tracer.untrusted import shown

__all__ = ("OneLineFormatter", "setup_logging")

FORMAT = "%(levelname)s %(message)s"


class OneLineFormatter(logging.Formatter):
    """A record, traceback included, as one line with control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return shown(super().format(record))


def setup_logging(level: str) -> None:
    """Log to stderr (the journal under systemd) at ``level``, one line a record."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
