"""Kernel log text formats, and splitting a log into boots.

Accepted forms, detected per file:

``dmesg``
    util-linux ``dmesg`` (``[    0.000000] msg``) and serial consoles.
``plain``
    ``dmesg -t``: messages with no prefix at all.
``dmesg-raw``
    ``dmesg -r``: ``<6>[    0.000000] msg`` (the time stamp is optional).
``dmesg-decode``
    ``dmesg -x``: ``kern  :info  : [    0.000000] msg``.
``kmsg``
    raw ``/dev/kmsg`` records, ``6,123,456789,-;msg``; continuation lines that start
    with a space (``SUBSYSTEM=…``) are dictionary data and are skipped.
``journal``
    ``journalctl -k -o short-monotonic``: ``[    0.000000] host kernel: msg``; the
    ``-- Boot ID --`` separators of ``journalctl -b all`` start a new boot.
``journal-short``
    ``journalctl -k`` in the default wall-clock ``short``/``short-iso`` forms (no
    monotonic time stamp).

A file that holds several boots yields one :class:`BootLog` each. A boot starts at a
``Linux version`` line, a journal boot separator, a kmsg sequence number that goes back, or
a time stamp that drops by more than a second. A serial console that also dumps the ring
buffer (``dmesg`` run at the end of the boot) shows the same boot twice; the shorter copy
is recognised as a replay and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ("BootLog", "LogLine", "detect_format", "split_boots")


@dataclass(frozen=True, slots=True)
class LogLine:
    """One kernel message. ``lineno`` is its 1-based line in the source text."""

    lineno: int
    msg: str
    ts: float | None = None
    level: int | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class BootLog:
    """The messages of one boot, in source order."""

    lines: tuple[LogLine, ...]
    format: str
    boot_id: str | None = None
    noise_lines: int = 0

    @property
    def complete(self) -> bool:
        """True when the log starts at the kernel banner (nothing was lost before it)."""
        return bool(self.lines) and self.lines[0].msg.startswith("Linux version ")


_TS = r"\[\s*(?P<ts>\d+\.\d+)\]"
_PATTERNS: dict[str, re.Pattern[str]] = {
    "kmsg": re.compile(r"^(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;(?P<msg>.*)$"),
    "dmesg-raw": re.compile(r"^<(?P<prio>\d+)>(?:" + _TS + r" ?)?(?P<msg>.*)$"),
    "dmesg-decode": re.compile(
        r"^(?P<fac>kern|user|mail|daemon|auth|syslog|lpr|news|uucp|cron|authpriv|ftp|"
        r"local[0-7])\s*:(?P<lvl>emerg|alert|crit|err|warn|notice|info|debug)\s*:\s?"
        r"(?:" + _TS + r" ?)?(?P<msg>.*)$"
    ),
    "journal": re.compile(r"^" + _TS + r" (?P<host>\S+) kernel: ?(?P<msg>.*)$"),
    "journal-short": re.compile(
        r"^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?|\d{4}-\d\d-\d\dT\S+)"
        r" (?P<host>\S+) kernel: ?(?P<msg>.*)$"
    ),
    "dmesg": re.compile(r"^" + _TS + r" ?(?P<msg>.*)$"),
}
# Checked in this order: journal lines also match the dmesg pattern.
_ORDER = ("kmsg", "dmesg-raw", "dmesg-decode", "journal", "journal-short", "dmesg")
_LEVELS = {n: i for i, n in enumerate(("emerg", "alert", "crit", "err", "warn", "notice",
                                       "info", "debug"))}
_JOURNAL_MARK = re.compile(r"^-- (?:Boot (?P<boot>[0-9a-f]{32}) --|Reboot --|.*--)$")
_ANSI = re.compile(r"\x1b(?:\[[0-9;=?]*[A-Za-z]|[()][0-9A-Za-z])")
_DETECT_LINES = 2000
# A time stamp that goes back by more than this many seconds starts a new boot.
_TS_RESET = 1.0
# Records looked at after a time drop before calling it a new boot.
_LOOKAHEAD = 16
# A boot whose (time, message) pairs lie at least this much inside its neighbour is a replay.
_REPLAY_SHARE = 0.9


def _clean(raw: str) -> str:
    line = raw.rstrip("\r\n")
    if "\x00" in line:
        line = line.replace("\x00", "")
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    return line.rstrip("\r")


def detect_format(lines: Sequence[str]) -> str:
    """The format that matches most of the first lines; ``plain`` when none does."""
    counts = dict.fromkeys(_ORDER, 0)
    seen = 0
    for raw in lines:
        line = _clean(raw)
        if not line.strip():
            continue
        seen += 1
        if seen > _DETECT_LINES:
            break
        for name in _ORDER:
            if _PATTERNS[name].match(line):
                counts[name] += 1
                break
    best = max(_ORDER, key=lambda n: counts[n])
    return best if counts[best] else "plain"


def _parse_line(fmt: str, lineno: int, line: str) -> LogLine | None:
    if fmt == "plain":
        return LogLine(lineno, line)
    m = _PATTERNS[fmt].match(line)
    if m is None:
        return None
    groups = m.groupdict()
    ts_text = groups.get("ts")
    ts = float(ts_text) if ts_text else None
    level: int | None = None
    seq: int | None = None
    if fmt == "kmsg":
        level = int(groups["prio"]) & 7
        seq = int(groups["seq"])
        ts = int(groups["usec"]) / 1e6
    elif fmt == "dmesg-raw":
        level = int(groups["prio"]) & 7
    elif fmt == "dmesg-decode":
        level = _LEVELS[groups["lvl"]]
    return LogLine(lineno, groups["msg"], ts, level, seq)


def _records(lines: list[str], fmt: str) -> Iterator[LogLine | str | None]:
    """Parsed records; a journal boot marker as its boot id (``""`` for "-- Reboot --");
    None for a line that is not a record of the format (noise)."""
    for lineno, raw in enumerate(lines, 1):
        line = _clean(raw)
        if fmt.startswith("journal"):
            mark = _JOURNAL_MARK.match(line)
            if mark:
                if mark.group("boot") or line == "-- Reboot --":
                    yield mark.group("boot") or ""
                continue
        if fmt == "kmsg" and line.startswith(" "):
            continue  # dictionary continuation of the previous record
        if not line.strip():
            continue
        yield _parse_line(fmt, lineno, line)


def _raw_boots(lines: list[str], fmt: str) -> Iterator[tuple[list[LogLine], str | None, int]]:
    items = list(_records(lines, fmt))
    current: list[LogLine] = []
    boot_id: str | None = None
    noise = 0
    for i, item in enumerate(items):
        if isinstance(item, str):
            if current:
                yield current, boot_id, noise
            current, noise = [], 0
            boot_id = item or None
            continue
        if item is None:
            noise += 1
            continue
        if current and _starts_new_boot(current[-1], item, items, i):
            yield current, boot_id, noise
            current, noise, boot_id = [], 0, None
        current.append(item)
    if current:
        yield current, boot_id, noise


def _ahead(items: list[LogLine | str | None], i: int) -> list[LogLine]:
    """The next few records after ``items[i]``, up to a journal boot marker."""
    out: list[LogLine] = []
    for item in items[i + 1:i + 1 + _LOOKAHEAD]:
        if isinstance(item, str):
            break
        if item is not None:
            out.append(item)
    return out


def _starts_new_boot(prev: LogLine, rec: LogLine, items: list[LogLine | str | None], i: int) -> bool:
    """Whether ``rec`` (``items[i]``) opens a new boot after ``prev``."""
    if rec.msg.startswith("Linux version "):
        return True
    if prev.seq is not None and rec.seq is not None and rec.seq < prev.seq:
        return True
    if prev.ts is None or rec.ts is None or rec.ts >= prev.ts - _TS_RESET:
        return False
    # A secondary CPU prints before its clock is synchronised: on 6.1 and 6.12 under TCG,
    # "[    0.371649] calibrate_delay_direct() failed to get a good estimate…" (two
    # lines) between 2.20 s and 2.39 s. A burst that returns to the old time is not a
    # new boot; a real one stays below it for far longer than the look-ahead.
    return not any(a.ts is not None and a.ts >= prev.ts - _TS_RESET for a in _ahead(items, i))


def _is_replay(a: Sequence[LogLine], b: Sequence[LogLine]) -> bool:
    """True when the smaller of two boots is a copy of part of the larger one."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    if not small or small[0].ts is None or small[0].msg != large[0].msg:
        return False
    keys = {(x.ts, x.msg) for x in large}
    shared = sum(1 for x in small if (x.ts, x.msg) in keys)
    return shared >= _REPLAY_SHARE * len(small)


def split_boots(text: str) -> list[BootLog]:
    """Split a kernel log into boots. Returns an empty list when nothing matched."""
    raw_lines = text.splitlines()
    fmt = detect_format(raw_lines[: _DETECT_LINES * 2])
    boots: list[BootLog] = []
    for lines, boot_id, noise in _raw_boots(raw_lines, fmt):
        log = BootLog(tuple(lines), fmt, boot_id, noise)
        # Boots with journal boot IDs are distinct by definition; only anonymous ones can
        # be a console's replay of the ring buffer.
        anonymous = boot_id is None and boots and boots[-1].boot_id is None
        if anonymous and _is_replay(boots[-1].lines, log.lines):
            prev = boots[-1]
            keep = log if len(log.lines) >= len(prev.lines) else prev
            boots[-1] = BootLog(keep.lines, fmt, prev.boot_id or log.boot_id,
                                prev.noise_lines + log.noise_lines)
            continue
        boots.append(log)
    return boots
