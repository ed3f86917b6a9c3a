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

This is the hot path of ``memledger analyze`` and of every ingest (see BENCHMARKS.md): the
text is cleaned once as a whole (CR, NUL, ANSI escapes), each line costs a few string
operations and no regular expression in the common ``dmesg`` form, and a boot is held as
columns (messages, line numbers, time stamps) rather than one object per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count, filterfalse, islice, pairwise

__all__ = ("BootLog", "LogLine", "detect_format", "split_boots")


@dataclass(frozen=True, slots=True)
class LogLine:
    """One kernel message. ``lineno`` is its 1-based line in the source text."""

    lineno: int
    msg: str
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class BootLog:
    """The messages of one boot, in source order, as three columns of equal length:
    the message text, its 1-based line in the source, and its time stamp in seconds
    (None where the format has none)."""

    msgs: list[str]
    linenos: Sequence[int]
    ts: list[float | None]
    format: str
    boot_id: str | None = None
    noise_lines: int = 0

    @property
    def lines(self) -> tuple[LogLine, ...]:
        """The messages as objects (built on demand; the parsers use the columns)."""
        return tuple(LogLine(n, m, t) for n, m, t in zip(self.linenos, self.msgs, self.ts, strict=True))

    @property
    def complete(self) -> bool:
        """True when the log starts at the kernel banner (nothing was lost before it)."""
        return bool(self.msgs) and self.msgs[0].startswith("Linux version ")


_TS = r"\[\s*(?P<ts>\d+\.\d+)\]"
# Each pattern matches a record's prefix; the message is the rest of the line.
_PATTERNS: dict[str, re.Pattern[str]] = {
    "kmsg": re.compile(r"(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;"),
    "dmesg-raw": re.compile(r"<(?P<prio>\d+)>(?:" + _TS + r" ?)?"),
    "dmesg-decode": re.compile(
        r"(?P<fac>kern|user|mail|daemon|auth|syslog|lpr|news|uucp|cron|authpriv|ftp|"
        r"local[0-7])\s*:(?P<lvl>emerg|alert|crit|err|warn|notice|info|debug)\s*:\s?"
        r"(?:" + _TS + r" ?)?"
    ),
    "journal": re.compile(_TS + r" (?P<host>\S+) kernel: ?"),
    "journal-short": re.compile(
        r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?|\d{4}-\d\d-\d\dT\S+)"
        r" (?P<host>\S+) kernel: ?"
    ),
    "dmesg": re.compile(_TS + r" ?"),
}
# Checked in this order: journal lines also match the dmesg pattern.
_ORDER = ("kmsg", "dmesg-raw", "dmesg-decode", "journal", "journal-short", "dmesg")
_JOURNAL_MARK = re.compile(r"^-- (?:Boot (?P<boot>[0-9a-f]{32}) --|Reboot --|.*--)$")
_ANSI = re.compile(r"\x1b(?:\[[0-9;=?]*[A-Za-z]|[()][0-9A-Za-z])")
_DETECT_LINES = 2000
# Matches that settle the format (a console log may open with firmware and loader lines).
_DETECT_ENOUGH = 100
# A time stamp that goes back by more than this many seconds starts a new boot.
_TS_RESET = 1.0
# Records looked at after a time drop before calling it a new boot.
_LOOKAHEAD = 16
# A boot whose (time, message) pairs lie at least this much inside its neighbour is a replay.
_REPLAY_SHARE = 0.9
# A time stamp outside [0, this) is not one (float() also reads "nan", "inf", "1e9").
_TS_MAX = 1e12


def _clean_text(text: str) -> str:
    """CR and CRLF line ends become LF; NUL bytes and ANSI escapes go (once, not per line)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    return text


def detect_format(lines: Sequence[str]) -> str:
    """The format that matches most of the first lines (it stops at the first format to
    match ``_DETECT_ENOUGH`` lines); ``plain`` when none does. The lines are cleaned
    already (see :func:`split_boots`)."""
    counts = dict.fromkeys(_ORDER, 0)
    seen = 0
    for line in lines:
        if not line.strip():
            continue
        seen += 1
        if seen > _DETECT_LINES:
            break
        for name in _ORDER:
            if _PATTERNS[name].match(line):
                counts[name] += 1
                if counts[name] >= _DETECT_ENOUGH:
                    return name
                break
    best = max(_ORDER, key=lambda n: counts[n])
    return best if counts[best] else "plain"


@dataclass(slots=True)
class _Segment:
    """Records up to a hard boot boundary (banner, journal marker, kmsg sequence reset);
    time drops inside it are only candidates until the records after them are seen.

    Line numbers are not kept per record: they run on from ``first``, past the lines in
    ``skipped`` (blank or noise lines after the first record)."""

    first: int = 0
    boot_id: str | None = None
    msgs: list[str] = field(default_factory=list)
    ts: list[float | None] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    noise: list[int] = field(default_factory=list)  # line numbers of non-record lines
    drops: list[int] = field(default_factory=list)  # record index after a time drop

    def linenos(self) -> Sequence[int]:
        n = len(self.msgs)
        if not self.skipped:
            return range(self.first, self.first + n)
        skip = set(self.skipped)
        return list(islice(filterfalse(skip.__contains__, count(self.first)), n))


def _dmesg_prefix(line: str) -> tuple[float, str] | None:
    """``[%5lu.%06lu]msg`` without the space, an empty message, or not a record."""
    j = line.find("]", 2)
    if line[:1] != "[" or j < 0:
        return None
    try:
        ts = float(line[1:j])
    except ValueError:
        return None
    if not 0.0 <= ts < _TS_MAX:
        return None
    return ts, line[j + 2:] if line[j + 1:j + 2] == " " else line[j + 1:]


def _scan_fast(lines: list[str], kmsg: bool) -> Iterator[_Segment]:
    """The two common forms by hand, without a regular expression:

    * ``dmesg``: ``[%5lu.%06lu] msg`` (printk's prefix; the space may be missing);
    * ``kmsg``: ``prio,seq,usec,flags[,…];msg`` (devkmsg_read()); a line that starts with
      a space is dictionary data of the record before. A sequence number that goes back
      starts a new boot.

    In both, a banner starts a new boot and a time drop may (see :func:`_cuts`; for kmsg,
    a later dump of a wrapped ring buffer starts at a higher sequence number). This loop
    is the hottest in memledger: a few string operations per line, and nothing built per
    line but the message and its time stamp."""
    seg = _Segment()
    msgs, tss = seg.msgs, seg.ts
    prev, prev_seq, seq = -1.0, -1, -1
    ts_max, reset = _TS_MAX, _TS_RESET  # locals: this loop runs once per line
    for lineno, line in enumerate(lines, 1):
        ts = -1.0
        if kmsg:
            semi = line.find(";")
            head = line[:semi].split(",", 3) if semi > 0 else ()
            # The sequence number and microseconds are u64s, at most 20 digits: longer
            # is not a record (and would overflow a float).
            if (len(head) == 4 and head[0].isdecimal() and head[1].isdecimal()
                    and head[2].isdecimal() and len(head[1]) <= 20 and len(head[2]) <= 20):
                seq, ts, msg = int(head[1]), int(head[2]) / 1e6, line[semi + 1:]
        else:
            # The time stamp ends at the first "] ": float() refuses any text with a "]".
            j = line.find("] ", 2)
            if j > 0 and line[0] == "[":
                try:  # noqa: SIM105 (contextlib.suppress costs a context manager per line)
                    ts = float(line[1:j])
                except ValueError:
                    pass
            if 0.0 <= ts < ts_max:
                msg = line[j + 2:]
            elif (rec := _dmesg_prefix(line)) is not None:
                ts, msg = rec
        if not 0.0 <= ts < ts_max:
            if line and not line.isspace() and not (kmsg and line[0] == " "):
                seg.noise.append(lineno)
            if msgs:
                seg.skipped.append(lineno)
            continue
        if not msgs:
            seg.first = lineno
        elif seq < prev_seq or msg.startswith("Linux version "):
            yield seg
            seg = _Segment(first=lineno)
            msgs, tss = seg.msgs, seg.ts
        elif ts < prev - reset:
            seg.drops.append(len(msgs))
        msgs.append(msg)
        tss.append(ts)
        prev, prev_seq = ts, seq
    yield seg


def _scan(lines: list[str], fmt: str) -> Iterator[_Segment]:
    """Every other form, with the format's prefix pattern (``plain``: every line)."""
    pattern = _PATTERNS.get(fmt)
    journal = fmt.startswith("journal")
    has_ts = pattern is not None and "ts" in pattern.groupindex
    seg = _Segment()
    prev_ts: float | None = None
    for lineno, line in enumerate(lines, 1):
        if journal and line.startswith("-- "):
            mark = _JOURNAL_MARK.match(line)
            if mark:
                if mark.group("boot") or line == "-- Reboot --":
                    if seg.msgs:
                        yield seg
                    seg = _Segment(boot_id=mark.group("boot"))
                elif seg.msgs:
                    seg.skipped.append(lineno)
                continue
        m = None
        if not line or line.isspace() or (pattern is not None and (m := pattern.match(line)) is None):
            if line and not line.isspace():
                seg.noise.append(lineno)
            if seg.msgs:
                seg.skipped.append(lineno)
            continue
        if m is None:
            msg, ts = line, None
        else:
            t = m.group("ts") if has_ts else None
            msg, ts = line[m.end():], float(t) if t else None
        if not seg.msgs:
            seg.first = lineno
        elif msg.startswith("Linux version "):
            yield seg
            seg = _Segment(first=lineno)
        elif ts is not None and prev_ts is not None and ts < prev_ts - _TS_RESET:
            seg.drops.append(len(seg.msgs))
        seg.msgs.append(msg)
        seg.ts.append(ts)
        prev_ts = ts
    yield seg


def _cuts(ts: list[float | None], drops: list[int]) -> list[int]:
    """The time drops that start a new boot.

    A secondary CPU prints before its clock is synchronised: on 6.1 and 6.12 under TCG,
    "[    0.371649] calibrate_delay_direct() failed to get a good estimate…" (two lines)
    between 2.20 s and 2.39 s. A burst that returns to the old time is not a new boot; a
    real one stays below it for far longer than the look-ahead.
    """
    out = []
    for i in drops:
        before = ts[i - 1]
        if before is None:
            continue
        floor = before - _TS_RESET
        if not any(t is not None and t >= floor for t in ts[i + 1:i + 1 + _LOOKAHEAD]):
            out.append(i)
    return out


def _boots(seg: _Segment, fmt: str) -> Iterator[BootLog]:
    """A segment's boots: one, or more where the time drops say so."""
    cuts = _cuts(seg.ts, seg.drops) if seg.drops else []
    linenos = seg.linenos()
    if not cuts:
        if seg.msgs:
            yield BootLog(seg.msgs, linenos, seg.ts, fmt, seg.boot_id, len(seg.noise))
        return
    edges = [0, *cuts, len(seg.msgs)]
    for k, (a, b) in enumerate(pairwise(edges)):
        # A noise line belongs to the boot whose records it came after.
        low = linenos[a] if k else 0
        high = linenos[b] if b < len(linenos) else float("inf")
        noise = sum(1 for n in seg.noise if low <= n < high)
        yield BootLog(seg.msgs[a:b], linenos[a:b], seg.ts[a:b], fmt,
                      seg.boot_id if k == 0 else None, noise)


def _is_replay(a: BootLog, b: BootLog) -> bool:
    """True when the smaller of two boots is a copy of part of the larger one."""
    small, large = (a, b) if len(a.msgs) <= len(b.msgs) else (b, a)
    if not small.msgs or small.ts[0] is None or small.msgs[0] != large.msgs[0]:
        return False
    keys = set(zip(large.ts, large.msgs, strict=True))
    shared = sum(1 for k in zip(small.ts, small.msgs, strict=True) if k in keys)
    return shared >= _REPLAY_SHARE * len(small.msgs)


def split_boots(text: str) -> list[BootLog]:
    """Split a kernel log into boots. Returns an empty list when nothing matched."""
    lines = _clean_text(text).split("\n")
    fmt = detect_format(lines[: _DETECT_LINES * 2])
    segments = (_scan_fast(lines, fmt == "kmsg") if fmt in ("dmesg", "kmsg")
                else _scan(lines, fmt))
    boots: list[BootLog] = []
    for seg in segments:
        for log in _boots(seg, fmt):
            if not log.msgs:
                continue
            # Boots with journal boot IDs are distinct by definition; only anonymous ones
            # can be a console's replay of the ring buffer.
            anonymous = log.boot_id is None and boots and boots[-1].boot_id is None
            if anonymous and _is_replay(boots[-1], log):
                prev = boots[-1]
                keep = log if len(log.msgs) >= len(prev.msgs) else prev
                boots[-1] = BootLog(keep.msgs, keep.linenos, keep.ts, fmt,
                                    prev.boot_id or log.boot_id,
                                    prev.noise_lines + log.noise_lines)
                continue
            boots.append(log)
    return boots
