"""The terminal edge: the one rich console every command prints with, and data as text.

A host name, DMI string, kernel release or log line is data: it may hold rich markup
(``[/x]`` raised MarkupError, ``[link=…]`` made a link) or escape sequences (CSI 2J
clears the screen, OSC 52 writes the reader's clipboard). Here no string is read as
markup or emoji code, and every control or bidi character is shown as its escape
(``\\x1b``, ``\\n``), whichever way it reaches the console: a ``str`` anywhere (a table
cell, a title, ``print``) goes through :meth:`_DataConsole.render_str`; a styled piece
is built with :func:`text`. Styling is ours, never the data's: ``Text`` objects only.
"""

from __future__ import annotations

import os
from typing import IO, Any

from memledger.tracer.untrusted import shown
from rich.console import Console
from rich.text import Text

__all__ = ("console", "text")


def text(value: object, style: str = "") -> Text:
    """``value`` as it reads, in ``style``: no markup, control characters escaped."""
    return Text(shown(str(value)), style=style)


class _DataConsole(Console):
    """A console that takes every string literally (no markup, no emoji codes) and shows
    its control characters escaped."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs.update(markup=False, emoji=False)
        return super().render_str(shown(text), **kwargs)


# Piped or written to a file, rich would lay a table out for 80 columns and cut what does
# not fit (two hosts "lab-memblock" and "lab-mem8g" both read "lab-me…" in a CI log): there,
# tables get this width, wider than any row memledger prints (COLUMNS still sets it).
PIPED_WIDTH = 400


def console(*, stderr: bool = False, file: IO[str] | None = None, width: int | None = None,
            record: bool = False) -> Console:
    """The console for a command's output (stdout, stderr or ``file``): a terminal's own
    width, else :data:`PIPED_WIDTH` unless ``width`` or ``$COLUMNS`` says otherwise."""
    out = _DataConsole(stderr=stderr, file=file, width=width, record=record, markup=False,
                       emoji=False)
    if width is None and not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = PIPED_WIDTH
    return out
