"""How every command reports user error: one line on stderr, exit code 2."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from memledger.tracer.untrusted import shown

__all__ = ("fail", "say")


def say(message: str) -> None:
    """One line on stderr; data in it (a path, a host name, a release) cannot break the
    line or reach the terminal as an escape sequence (the terminal edge of plain lines;
    tables go through exporters.terminal)."""
    click.echo(shown(message), err=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``memledger: error: MESSAGE`` and exit (2: bad input; 1: runtime failure)."""
    say(f"memledger: error: {message}")
    sys.exit(code)
