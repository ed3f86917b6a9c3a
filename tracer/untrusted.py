"""Checks on text and JSON that come from spool files, which anyone with spool access wrote (pure).

Every string a capture's manifest or an event batch carries ends up in the store (a
PostgreSQL text or jsonb value), in log lines and in metric labels, so it is checked where
it is parsed, with a one-line reason:

- JSON nested deeper than a header ever is (Python's parser recurses, so a line of
  100 000 ``[`` would raise RecursionError);
- lone UTF-16 surrogates (``"\\ud800"`` is valid JSON but not encodable as UTF-8, which
  every database driver needs);
- NUL (PostgreSQL text and jsonb cannot hold U+0000) and other control characters in
  names, which would forge log lines;
- strings longer than the kernel can produce (each cap cites its kernel limit);
- times outside what a UTC ``datetime`` can hold (``0001-01-01T00:00:00+23:59``).

Text read from a capture's files (the kernel log, DMI strings) is data rather than
identity: :func:`scrub` replaces what the store cannot hold instead of refusing it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

__all__ = (
    "MAX_JSON_DEPTH",
    "UntrustedError",
    "check_text",
    "load_json",
    "parse_time",
    "printable",
    "scrub",
    "shown",
)

# A manifest nests two levels (unreadable: {path: reason}); an event one.
MAX_JSON_DEPTH = 8
_CONTROL_OR_SURROGATE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_NUL_OR_SURROGATE = re.compile(r"[\x00\ud800-\udfff]")
# What a terminal, a log reader or a markdown viewer acts on rather than shows: C0 (ESC
# starts CSI and OSC sequences: CSI 2J clears the screen, OSC 52 writes the clipboard),
# DEL, C1 (U+009B is a one-character CSI), line and paragraph separators, the bidi
# embeddings, overrides and isolates and their marks (text shown in another order than
# it is read), and lone surrogates.
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                         "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class UntrustedError(ValueError):
    """The value cannot be stored; the message is one line naming it."""


def _depth(data: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def load_json(data: bytes, what: str) -> Any:
    """``json.loads`` for one untrusted document: refuses nesting deeper than
    MAX_JSON_DEPTH before parsing, and non-UTF-8 bytes."""
    # The scan only runs when there are enough brackets to matter (a header has a few).
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and _depth(data) > MAX_JSON_DEPTH:
        raise UntrustedError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data)
    except RecursionError:  # the pre-scan makes this unreachable; kept as the last word
        raise UntrustedError(f"{what} nests too deep") from None
    except UnicodeDecodeError:
        raise UntrustedError(f"{what} is not UTF-8") from None
    except ValueError as exc:
        raise UntrustedError(f"{what} is not JSON ({exc})") from None


def check_text(value: str, what: str, max_chars: int, *, controls: bool = False) -> str:
    """``value`` unchanged, or :class:`UntrustedError` when it is longer than
    ``max_chars``, holds a lone surrogate or NUL, or (unless ``controls``) any other
    control character."""
    if len(value) > max_chars:
        raise UntrustedError(f"{what} is {len(value)} characters, over the {max_chars} a "
                             "kernel can produce")
    bad = (_NUL_OR_SURROGATE if controls else _CONTROL_OR_SURROGATE).search(value)
    if bad:
        raise UntrustedError(f"{what} holds the character {ascii(bad.group())[1:-1]}, which "
                             "cannot be stored")
    return value


def scrub(value: str) -> str:
    """``value`` with NUL and lone surrogates replaced by U+FFFD (what the store cannot hold)."""
    return _NUL_OR_SURROGATE.sub("\ufffd", value)


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _SHORT.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def shown(text: str) -> str:
    """``text`` as an output can show it: every character a terminal, log reader or
    viewer would act on (control, bidi, separator, surrogate) written as its escape
    (``\\n``, ``\\x1b``, ``\\u202e``); the rest unchanged. The one line every output
    (terminal, markdown, log) passes data through; what is stored stays as written."""
    return _UNSHOWABLE.sub(_escape, text) if _UNSHOWABLE.search(text) else text


def printable(name: str, max_chars: int = 200) -> str:
    """A file name as it can go into a log line: control characters and non-UTF-8 escapes
    shown as ``\\xNN``, cut to ``max_chars`` (a name with a newline cannot forge a line)."""
    out = ascii(name)[1:-1] if _CONTROL_OR_SURROGATE.search(name) else name
    return out if len(out) <= max_chars else out[:max_chars] + "…"


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 time with a zone, in UTC. Refuses times a ``datetime`` cannot hold in
    UTC (year 1 with a positive offset, year 9999 with a negative one)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UntrustedError(f"{what} {text[:40]!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise UntrustedError(f"{what} {text[:40]!r} has no time zone")
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise UntrustedError(f"{what} {text[:40]!r} is out of range in UTC") from None
