"""The markdown edge: data (host names, releases, command lines, DMI strings) as markdown
text that reads as written and does nothing else.

Every character that could start markup inside a line is backslash-escaped (CommonMark
lets any ASCII punctuation be): emphasis and code (``*``, ``_``, `````, ``~``), links and
images (``[``, ``]``, ``!``), raw HTML and autolinks (``<``, ``>``, ``&``), a table's cell
boundary (``|``), a heading (``#``), and what GitHub's autolink extension turns into a
link by itself (``http://``, ``www.``, an e-mail's ``@``). Control characters, newlines
first among them, are shown escaped, so data never starts a line of its own: no heading,
list item or table row comes from it.
"""

from __future__ import annotations

import re

from memledger.tracer.untrusted import shown

__all__ = ("md",)

_SPECIAL = re.compile(r"[\\`*_\[\]<>!|&~#@]|:(?=//)|(?<=[wW]{3})\.")


def md(value: object) -> str:
    """``value`` as markdown text: shown as it reads, never as markup."""
    return _SPECIAL.sub(lambda m: "\\" + m.group(), shown(str(value)))
