"""How every command reports user error: one line on stderr, exit code 2."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

__all__ = ("fail",)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``memledger: error: MESSAGE`` and exit (2: bad input; 1: runtime failure)."""
    click.echo(f"memledger: error: {message}", err=True)
    sys.exit(code)
