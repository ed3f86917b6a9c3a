"""Kernel log text formats, and splitting a log into boots.

Accepted forms, detected where the text changes to them (see "A format that changes" below):

``dmesg``
    util-linux ``dmesg`` (``[    0.000000] msg``) and serial consoles.
``dmesg-caller``
    the same with printk caller ids (``CONFIG_PRINTK_CALLER``): ``[    0.000000][    T0] msg``
    from the console, ``[    0.000000] [      T0] msg`` from ``dmesg``; MediaTek's
    ``[    0.000000]  [0:        swapper:    0] msg`` is read the same way.
``dmesg-ctime``
    ``dmesg -T``: ``[Sun Jun 18 21:31:03 2023] msg`` (a wall clock, no monotonic time).
``dmesg-iso``
    ``dmesg --time-format iso``: ``2023-06-18T21:31:03,123456+02:00 msg``.
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
    ``journalctl -k -o short-monotonic``: ``[    0.000000] host kernel: msg``, with or
    without the host name.
``syslog``
    syslog and kern.log (``Oct 18 21:26:33 host kernel: [    0.000000] msg``, the host and
    the bracketed time stamp optional), which is also ``journalctl -k``'s default form.
``syslog-iso``
    the same with an ISO 8601 time (rsyslog's high-precision form,
    ``2023-10-18T21:26:33.123456+02:00 host kernel: msg``; ``journalctl -o short-iso``).

Where a syslog line carries the kernel's own ``[    0.000000]`` time stamp, that is the
record's time. Lines of other programs in a syslog file are noise, not records.

A format that changes part-way (a kern.log, a note, then a plain ``dmesg`` of the next
boot; rsyslog's time format changed by an upgrade) is followed line by line. The first
lines decide the format the scan starts in (:func:`detect_format`). A line that is not a
record of the current format, or a record whose message starts with another format's
prefix (a host and ``kernel:``, a caller id), is classified by its own prefix; when it
and most of the next prefixed lines are of another format, the scan goes on in that
format from that line. A plain part (no prefix at all) is recognised where it starts at
the kernel banner followed by the kernel's command line. Each boot is named by the format
of most of its records.

A file that holds several boots yields one :class:`BootLog` each. A new boot is marked by
what only a new boot prints: the kernel banner (``Linux version …``, with the
``[    0.000000]`` lines that some kernels print just before it), a journal boot separator,
or a kmsg sequence number that goes back. A time stamp that goes back is not enough: a
secondary CPU or NUMA node whose clock is not yet synchronised prints earlier times in
the middle of a boot. It starts a new boot only when the time stays back and the
messages after it repeat the messages before it (the same kernel on the same machine
booting again, its banner lost to a wrapped ring buffer). A serial console that also
dumps the ring buffer (``dmesg`` run at the end of the boot) shows the same boot twice;
the shorter copy is recognised as a replay and dropped.

This is the hot path of ``memledger analyze`` and of every ingest (see BENCHMARKS.md): the
text is cleaned once as a whole (CR, NUL, ANSI escapes), each line costs a few string
operations and no regular expression in the common ``dmesg`` form, and a boot is held as
columns (messages, line numbers, time stamps) rather than one object per line.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, count, filterfalse, islice, pairwise

__all__ = ("BootLog", "LogLine", "detect_format", "is_banner", "split_boots")


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
    (None where the format has none). ``banner`` is the index of the kernel banner
    (``Linux version …``), None when the log does not hold it."""

    msgs: list[str]
    linenos: Sequence[int]
    ts: list[float | None]
    format: str
    boot_id: str | None = None
    noise_lines: int = 0
    banner: int | None = None

    @property
    def lines(self) -> tuple[LogLine, ...]:
        """The messages as objects (built on demand; the parsers use the columns)."""
        return tuple(LogLine(n, m, t) for n, m, t in zip(self.linenos, self.msgs, self.ts, strict=True))

    @property
    def complete(self) -> bool:
        """True when the log starts at the kernel banner (nothing was lost before it), or
        at the ``[    0.000000]`` lines that some kernels print before it (3.x's
        "Initializing cgroup subsys cpuset", arm64's "Booting Linux on physical CPU")."""
        return self.banner is not None and (self.banner == 0 or all(
            t == 0.0 for t in self.ts[:self.banner]))


_TS = r"\[\s*(?P<ts>\d+\.\d+)\]"
# syslog's program field: "host kernel:", "kernel:" (BusyBox, no host) or "kernel[0]:".
_KERNEL = r" (?:(?P<host>\S+) )?kernel(?:\[\d+\])?: ?"
# A month or weekday as the C library abbreviates it in any locale ("Oct", "août", "déc.").
_NAME = r"[^\W\d_]{2,5}\.?"
# "Oct 18 21:26:33"; the RHEL/CentOS installer's syslog (anaconda) has the time alone,
# with milliseconds: "03:09:07,531 NOTICE kernel:Linux version …".
_BSD_TIME = r"(?:" + _NAME + r" [ \d]\d )?\d\d:\d\d:\d\d(?:[.,]\d+)?"
# RFC 3339 (rsyslog), journalctl's short-iso and short-full ("Wed 2023-10-18 21:26:33 CEST").
_ISO_TIME = (r"(?:[A-Z][a-z]{2} )?\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?"
             r"(?: ?(?:Z|[+-]\d\d:?\d\d|[A-Z]{2,5}))?")
# Each pattern matches a record's prefix; the message is the rest of the line.
_PATTERNS: dict[str, re.Pattern[str]] = {
    "kmsg": re.compile(r"(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;"),
    "dmesg-raw": re.compile(r"<(?P<prio>\d+)>(?:" + _TS + r" ?)?"),
    "dmesg-decode": re.compile(
        r"(?P<fac>kern|user|mail|daemon|auth|syslog|lpr|news|uucp|cron|authpriv|ftp|"
        r"local[0-7])\s*:(?P<lvl>emerg|alert|crit|err|warn|notice|info|debug)\s*:\s?"
        r"(?:" + _TS + r" ?)?"
    ),
    "journal": re.compile(_TS + _KERNEL),
    "syslog": re.compile(_BSD_TIME + _KERNEL),
    "syslog-iso": re.compile(_ISO_TIME + _KERNEL),
    "dmesg-ctime": re.compile(r"\[" + _NAME + " " + _NAME + r" [ \d]\d \d\d:\d\d:\d\d \d{4}\] ?"),
    "dmesg-iso": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d+[+-]\d\d:\d\d ?"),
    "dmesg": re.compile(_TS + r" ?"),
}
# Checked in this order: journal lines also match the dmesg pattern, syslog-iso lines the
# dmesg-iso one.
_ORDER = ("kmsg", "dmesg-raw", "dmesg-decode", "journal", "syslog", "syslog-iso",
          "dmesg-ctime", "dmesg-iso", "dmesg")
# The kernel's own time stamp inside a syslog line ("host kernel: [    0.000000] msg").
_INNER_TS = re.compile(r"\[\s*(?P<ts>\d+\.\d+)\] ?")
# printk's caller id (15d199a0cf9e, "printk: Add caller information to printk() output.",
# v5.1): "[    T1]" for a task, "[    C0]" for a CPU in interrupt context; dmesg prints it
# after a space, the console without. MediaTek kernels print "[cpu:  comm:  pid]",
# Samsung's "c<cpu> <pid>" ("<5>[    0.000000] c0      0 Linux version …").
_CALLER = re.compile(r" ?(?:\[\s*(?:[TC]\d+|\d+:[^\]]*:\s*\d+)\]|c\d{1,3} +\d+) ?")
# A leading "<N>" before a dmesg record: a console line with its syslog priority.
_PRIORITY = re.compile(r"<\d{1,3}>")
_JOURNAL_MARK = re.compile(r"^-- (?:Boot (?P<boot>[0-9a-f]{32}) --|Reboot --|.*--)$")
_ANSI = re.compile(r"\x1b(?:\[[0-9;=?]*[A-Za-z]|[()][0-9A-Za-z])")
_DETECT_LINES = 2000
# Matches that settle the format (a console log may open with firmware and loader lines).
_DETECT_ENOUGH = 100
# A time stamp that goes back by more than this many seconds may start a new boot.
_TS_RESET = 1.0
# Records looked at after a time drop before calling it a new boot.
_LOOKAHEAD = 16
# Of those, the share that must repeat a message from before the drop.
_REPEAT_SHARE = 0.5
# A boot whose (time, message) pairs lie at least this much inside its neighbour is a replay.
_REPLAY_SHARE = 0.9
# A time stamp outside [0, this) is not one (float() also reads "nan", "inf", "1e9").
_TS_MAX = 1e12
_BANNER = "Linux version "
# Some arm64 consoles show "Booting Linux on physical CPU 0x… [0x…]" without its line
# end, the banner joined to it (seen on Ubuntu's 6.8 on a Kunpeng server).
_BOOTING = "Booting Linux on physical CPU "
_BANNERS = (_BANNER, _BOOTING)  # one startswith() per record in the loops, is_banner() on a hit
# A change of format: from a line of another format, the next _SWITCH_LOOK lines with a
# prefix (among at most _SWITCH_SPAN lines) are looked at; at least _SWITCH_MIN of them,
# and _SWITCH_SHARE of those looked at, must be of that format. One stray line (a note, a
# pasted line) is not a change.
_SWITCH_LOOK = 8
_SWITCH_SPAN = 500
_SWITCH_MIN = 3
_SWITCH_SHARE = 0.75
# The formats that hold journal boot separators ("-- Boot … --").
_MARKED = ("journal", "syslog", "syslog-iso")
# The formats a line may be of, by its first character, in _ORDER.
_BY_BRACKET = ("journal", "dmesg-ctime", "dmesg")
_BY_DIGIT = ("kmsg", "syslog", "syslog-iso", "dmesg-iso")
_BY_LETTER = ("dmesg-decode", "syslog", "syslog-iso")
_FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
               "cron", "ftp", "local")
# A plain part starts at a banner only when start_kernel()'s "Kernel command line: "
# follows within this many lines, before any other banner: the text of /proc/version in a
# bundle of files is a banner line too. (efi=debug and memblock=debug boots print up to
# 900 lines between the two.)
_PLAIN_SPAN = 2000
_CMDLINE = "Kernel command line: "
# What a line of another format can start with (or hold: "kernel"); a line with none of
# them is not asked (:func:`_switch_at`), which keeps a syslog's other programs' lines cheap.
_LEADS = frozenset("[<-0123456789")
_STARTS = (*_FACILITIES, *_BANNERS)
# Another program's line in journalctl -k's monotonic form, written to /dev/kmsg
# ("[    2.531694] systemd[1]: Inserted module 'autofs4'", WSL's "[    3.950100] init: (1)
# ERROR: …"): noise there. From a journal, such lines are not counted as dmesg.
_JOURNAL_OTHER = re.compile(_TS + r" (?:(?:\S+ )?[^\s:\[]+\[\d+\]|[^\s:\[]+): ")
# Another program's syslog line ("Oct 18 21:26:33 host sshd[812]: …"): not plain text.
_OTHER = re.compile(r"(?:" + _BSD_TIME + "|" + _ISO_TIME + r") (?:\S+ )?[^\s:]+: ")


def is_banner(msg: str) -> bool:
    """The kernel banner, alone or after arm64's "Booting Linux on physical CPU"."""
    return msg.startswith(_BANNER) or (msg.startswith(_BOOTING) and " Linux version " in msg)


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
    match ``_DETECT_ENOUGH`` lines); ``plain`` when none does. ``dmesg`` becomes
    ``dmesg-caller`` when most of its messages start with a caller id. The lines are
    cleaned already (see :func:`split_boots`)."""
    counts = dict.fromkeys(_ORDER, 0)
    seen = callers = 0
    best = ""
    for line in lines:
        if not line.strip():
            continue
        seen += 1
        if seen > _DETECT_LINES:
            break
        for name in _ORDER:
            m = _PATTERNS[name].match(line)
            if m:
                counts[name] += 1
                if name == "dmesg" and _CALLER.match(line, m.end()):
                    callers += 1
                if counts[name] >= _DETECT_ENOUGH:
                    best = name
                break
        if best:
            break
    best = best or max(_ORDER, key=lambda n: counts[n])
    if not counts[best]:
        return "plain"
    if best == "dmesg" and callers * 2 > counts["dmesg"]:
        return "dmesg-caller"
    return best


def _kind(line: str) -> str | None:
    """The format whose prefix starts ``line``, checked in the order :func:`detect_format`
    checks them; ``mark`` for a journal separator line, ``plain`` for the kernel banner
    without a prefix, None for any other line (text, another program's syslog line)."""
    c = line[:1]
    names: tuple[str, ...]
    if c == "[":
        names = _BY_BRACKET
    elif c == "<":
        # A priority of another facility than the kernel's (0) is a program's message
        # written to /dev/kmsg ("<14>Jun  9 14:29:04 ec2: …").
        p = _PRIORITY.match(line)
        return "dmesg-raw" if p is not None and int(line[1:p.end() - 1]) < 8 else None
    elif c.isdigit():
        names = _BY_DIGIT
    elif c == "-":
        return "mark" if _JOURNAL_MARK.match(line) else None
    elif line.startswith(_FACILITIES) or "kernel" in line:
        names = _BY_LETTER
    else:
        names = ()
    for name in names:
        if name in _MARKED and "kernel" not in line:
            continue
        m = _PATTERNS[name].match(line)
        if m:
            return "dmesg-caller" if name == "dmesg" and _CALLER.match(line, m.end()) else name
    return "plain" if line.startswith(_BANNERS) and is_banner(line) else None


def _window(lines: list[str], start: int, span: int) -> Iterator[str]:
    """``lines[start:start + span]`` one by one, without copying them (islice would step
    over the ``start`` lines before)."""
    return map(lines.__getitem__, range(start, min(start + span, len(lines))))


def _switch_at(lines: list[str], i: int, fmt: str) -> str | None:
    """The format the text changes to at ``lines[i]``, a line the scan in ``fmt`` cannot
    read as it is: the line's own format when most of the prefixed lines from it on are of
    that format too; None when nothing changes. A journal separator changes to the format
    of the lines after it; a plain part starts at a banner, its next lines have no prefix
    and the kernel's command line follows (:func:`_boots_here`). The looks ahead are
    bounded, so a log of any size stays linear."""
    new = _kind(lines[i])
    if new is None or new == fmt or (new == "dmesg" and fmt == "dmesg-caller"):
        return None
    other = _JOURNAL_OTHER.match if fmt == "journal" else None
    if other is not None and other(lines[i]):
        return None
    start = i
    if new == "mark":
        # The first format among the next prefixed lines, separators counted.
        start = i + 1
        ahead = (k for k in map(_kind, _window(lines, start, _SWITCH_SPAN)) if k is not None)
        new = next((k for k in islice(ahead, _SWITCH_LOOK) if k != "mark"), None)
        if new is None or new not in _MARKED or new == fmt:
            return None
    # Only a line with a prefix (or a banner) starts a look, and a look stops after
    # _SWITCH_LOOK such lines: each line is read by at most _SWITCH_LOOK looks.
    looked = hits = 0
    for line in _window(lines, start, _SWITCH_SPAN):
        k = _kind(line)
        if new == "plain":
            if not line or line.isspace():
                continue
            hit = k in (None, "plain") and _OTHER.match(line) is None
        elif k is None or (other is not None and other(line)):
            continue
        else:
            hit = k == new or (k == "mark" and new in _MARKED)
        looked += 1
        hits += hit
        if looked == _SWITCH_LOOK:
            break
    if hits < _SWITCH_MIN or hits < _SWITCH_SHARE * looked:
        return None
    return new if new != "plain" or _boots_here(lines, i) else None


def _boots_here(lines: list[str], i: int) -> bool:
    """True when the plain banner at ``lines[i]`` starts a boot: start_kernel()'s command
    line follows before another banner. The look stops at the next banner, so the looks
    from every banner of a text read each line once."""
    for line in _window(lines, i + 1, _PLAIN_SPAN):
        if line.startswith(_CMDLINE):
            return True
        if line.startswith(_BANNERS) and is_banner(line):
            return False
    return False


@dataclass(slots=True)
class _Segment:
    """Records up to a hard boot boundary (banner, journal marker, kmsg sequence reset);
    time drops inside it are only candidates until the records after them are seen.

    Line numbers are not kept per record: they run on from ``first``, past the lines in
    ``skipped`` (blank or noise lines after the first record)."""

    first: int = 0
    boot_id: str | None = None
    banner: int | None = None
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

    def prelude(self) -> int:
        """Where the trailing ``[    0.000000]`` records start: the lines a kernel prints
        before its banner, once the time went back to zero for them (len(msgs) if none;
        never at or before this segment's own banner)."""
        ts, k = self.ts, len(self.ts)
        while k and ts[k - 1] == 0.0:
            k -= 1
        return k if self.banner is None else max(k, self.banner + 1)

    def take_tail(self, k: int) -> _Segment:
        """Move records ``k:`` (and the lines among and after them) to a new segment."""
        tail = _Segment(boot_id=None)
        if k >= len(self.msgs):
            return tail
        tail.first = first = self.linenos()[k]
        tail.msgs, tail.ts = self.msgs[k:], self.ts[k:]
        del self.msgs[k:], self.ts[k:]
        tail.skipped = [n for n in self.skipped if n > first]
        self.skipped = [n for n in self.skipped if n < first]
        tail.noise = [n for n in self.noise if n > first]
        self.noise = [n for n in self.noise if n < first]
        tail.drops = [d - k for d in self.drops if d > k]
        self.drops = [d for d in self.drops if d < k]
        return tail


def _banner_split(seg: _Segment) -> tuple[_Segment | None, _Segment]:
    """At a banner: the finished segment (None when nothing of it is left) and the new
    boot's segment, which takes the ``[    0.000000]`` records printed just before the
    banner."""
    new = seg.take_tail(seg.prelude())
    new.banner = len(new.msgs)
    return (seg if seg.msgs else None), new


def _dmesg_prefix(line: str) -> tuple[float, str] | None:
    """``[%5lu.%06lu]msg`` without the space, ``<N>[…] msg`` with a priority, an empty
    message, or not a record."""
    if line[:1] == "<" and (p := _PRIORITY.match(line)) is not None:
        line = line[p.end():]
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


@dataclass(slots=True)
class _State:
    """What a scan hands on where the format changes: the open segment, the last record's
    time stamp and kmsg sequence number (-1: none), and the runs so far, each as its
    first line (1-based) and format."""

    seg: _Segment = field(default_factory=_Segment)
    prev_ts: float | None = None
    prev_seq: int = -1
    runs: list[tuple[int, str]] = field(default_factory=list)


# A scan reads (line number, line) rows, yields the finished segments and returns the line
# number where the format changes and the new format, or None at the end of the text. It
# never changes format at line ``hold`` (the first of a run after a change).
_Scan = Generator[_Segment, None, tuple[int, str] | None]


def _scan_fast(lines: list[str], rows: Iterator[tuple[int, str]], hold: int, fmt: str,
               st: _State) -> _Scan:
    """The common forms by hand, without a regular expression on the common path:

    * ``dmesg``: ``[%5lu.%06lu] msg`` (printk's prefix; the space may be missing), and
      ``dmesg-caller``, the same with a caller id before the message;
    * ``kmsg``: ``prio,seq,usec,flags[,…];msg`` (devkmsg_read()); a line that starts with
      a space is dictionary data of the record before. A sequence number that goes back
      starts a new boot.

    In both, a banner starts a new boot and a time drop may (see :func:`_cuts`; for kmsg,
    a later dump of a wrapped ring buffer starts at a higher sequence number). A line
    that is not a record, and a record whose message holds ``kernel`` (or starts like a
    caller id where the format has none), is asked whether the format changes there
    (:func:`_switch_at`).
    This loop is the hottest in memledger: a few string operations per line, and nothing
    built per line but the message and its time stamp."""
    kmsg, caller = fmt == "kmsg", fmt == "dmesg-caller"
    seg = st.seg
    msgs, tss = seg.msgs, seg.ts
    prev = -1.0 if st.prev_ts is None else st.prev_ts
    prev_seq = seq = st.prev_seq
    ts_max, reset = _TS_MAX, _TS_RESET  # locals: this loop runs once per line
    strip_caller, switch, leads, starts = _CALLER.match, _switch_at, _LEADS, _STARTS
    for lineno, line in rows:
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
            if caller and 0.0 <= ts < ts_max and (c := strip_caller(msg)) is not None:
                msg = msg[c.end():]
        if not 0.0 <= ts < ts_max:
            if line and not line.isspace() and not (kmsg and line[0] == " "):
                if ((line[0] in leads or line.startswith(starts) or "kernel" in line)
                        and lineno != hold and (new := switch(lines, lineno - 1, fmt))):
                    st.seg, st.prev_ts, st.prev_seq = seg, (prev if prev >= 0.0 else None), prev_seq
                    return lineno, new
                seg.noise.append(lineno)
            if msgs:
                seg.skipped.append(lineno)
            continue
        # A journal line ("[    0.5] host kernel: …"), or a caller id where the format has
        # none: maybe another format from here.
        if (not kmsg and ("kernel" in msg or (
                not caller and msg[:1] in "[ c" and strip_caller(msg) is not None))
                and lineno != hold and (new := switch(lines, lineno - 1, fmt))):
            st.seg, st.prev_ts, st.prev_seq = seg, (prev if prev >= 0.0 else None), prev_seq
            return lineno, new
        if not msgs:
            seg.first = lineno
            if msg.startswith(_BANNERS) and is_banner(msg):
                seg.banner = 0
        elif seq < prev_seq:
            yield seg
            seg = _Segment(first=lineno, banner=0 if is_banner(msg) else None)
            msgs, tss = seg.msgs, seg.ts
        elif msg.startswith(_BANNERS) and is_banner(msg):
            done, seg = _banner_split(seg)
            if done is not None:
                yield done
            if not seg.msgs:
                seg.first = lineno
            msgs, tss = seg.msgs, seg.ts
        elif ts < prev - reset:
            seg.drops.append(len(msgs))
        msgs.append(msg)
        tss.append(ts)
        prev, prev_seq = ts, seq
    st.seg, st.prev_ts, st.prev_seq = seg, (prev if prev >= 0.0 else None), prev_seq
    return None


def _scan(lines: list[str], rows: Iterator[tuple[int, str]], hold: int, fmt: str,
          st: _State) -> _Scan:
    """Every other form, with the format's prefix pattern (``plain``: every line). Like
    :func:`_scan_fast`, a loop over every line of syslogs of many megabytes: names are
    bound to locals and a substring test spares most lines the regular expression. A
    line that is not a record (in ``plain``: any line with a prefix) is asked whether the
    format changes there (:func:`_switch_at`)."""
    pattern = _PATTERNS.get(fmt)
    match = pattern.match if pattern is not None else None
    search = pattern.search if pattern is not None else None
    marks = fmt in _MARKED
    has_ts = pattern is not None and "ts" in pattern.groupindex
    inner_ts, caller, banners, reset = _INNER_TS.match, _CALLER.match, _BANNERS, _TS_RESET
    leads, starts, switch = _LEADS, _STARTS, _switch_at
    seg = st.seg
    msgs, tss = seg.msgs, seg.ts
    prev_ts = st.prev_ts
    for lineno, line in rows:
        if marks and line[:3] == "-- ":
            mark = _JOURNAL_MARK.match(line)
            if mark:
                if mark.group("boot") or line == "-- Reboot --":
                    if msgs:
                        yield seg
                    seg = _Segment(boot_id=mark.group("boot"))
                    msgs, tss = seg.msgs, seg.ts
                elif msgs:
                    seg.skipped.append(lineno)
                continue
        m = None
        # Most lines of a syslog are other programs': one substring test spares the regex.
        if match is not None and line and (not marks or "kernel" in line):
            m = match(line)
            if m is None and marks and search is not None and " kernel:" in line:
                # A line torn at a crash: the start of one line, then a whole one.
                m = search(line, 1)
        if (match is None and line and (line[0] in leads or line.startswith(starts) or "kernel" in line)
                and lineno != hold and (new := switch(lines, lineno - 1, fmt))):
            st.seg, st.prev_ts = seg, prev_ts
            return lineno, new
        if m is None and (match is not None or not line or line.isspace()):
            if line and not line.isspace():
                if ((line[0] in leads or line.startswith(starts) or "kernel" in line)
                        and lineno != hold and (new := switch(lines, lineno - 1, fmt))):
                    st.seg, st.prev_ts = seg, prev_ts
                    return lineno, new
                seg.noise.append(lineno)
            if msgs:
                seg.skipped.append(lineno)
            continue
        ts: float | None = None
        if m is None:
            msg = line
        else:
            t = m.group("ts") if has_ts else None
            msg = line[m.end():]
            if t:
                ts = float(t)
            elif msg[:1] == "[" and (inner := inner_ts(msg)) is not None:
                ts, msg = float(inner.group("ts")), msg[inner.end():]
            first = msg[:1]
            if (first == "[" or (first == " " and msg[1:2] == "[")
                    or (first == "c" and msg[1:2].isdigit())) and (c := caller(msg)):
                msg = msg[c.end():]
            if ts is not None and not 0.0 <= ts < _TS_MAX:
                ts = None
        banner = msg.startswith(banners) and is_banner(msg)
        if not msgs:
            seg.first = lineno
            if banner:
                seg.banner = 0
        elif banner:
            boot_id = seg.boot_id
            done, seg = _banner_split(seg)
            if done is None:
                seg.boot_id = boot_id
            else:
                yield done
            if not seg.msgs:
                seg.first = lineno
            msgs, tss = seg.msgs, seg.ts
        elif ts is not None and prev_ts is not None and ts < prev_ts - reset:
            seg.drops.append(len(msgs))
        msgs.append(msg)
        tss.append(ts)
        prev_ts = ts
    st.seg, st.prev_ts = seg, prev_ts
    return None


def _scan_all(lines: list[str], fmt: str, st: _State) -> Iterator[_Segment]:
    """The segments of the whole text, each run of lines scanned in its own format; a
    boot goes on across a change of format. ``st.runs`` records the runs. The runs share
    one pass over the lines: the line a run ends at is handed to the next."""
    base = enumerate(lines, 1)
    rows: Iterator[tuple[int, str]] = base
    first, hold = 1, 0
    while True:
        st.runs.append((first, fmt))
        scan = _scan_fast if fmt in ("dmesg", "dmesg-caller", "kmsg") else _scan
        change = yield from scan(lines, rows, hold, fmt, st)
        if change is None:
            break
        first, fmt = change
        hold = first
        rows = chain(((first, lines[first - 1]),), base)
        st.prev_seq = -1  # a kmsg sequence goes on only within its own run
    yield st.seg


def _cuts(msgs: list[str], ts: list[float | None], drops: list[int]) -> list[int]:
    """The time drops that start a new boot: the time stays back for the look-ahead, and
    most messages there repeat messages from before the drop.

    A secondary CPU prints before its clock is synchronised: on 6.1 and 6.12 under TCG,
    "[    0.371649] calibrate_delay_direct() failed to get a good estimate…" (two lines)
    between 2.20 s and 2.39 s, a burst that returns to the old time. On a NUMA server the
    first CPU of another node can run ahead ("[    1.270005] .... node  #1, CPUs:   #8"
    followed by "[    0.214304] …"), and the boot goes on from the earlier time: the
    time stays back, but the messages are new. Only a second boot prints its messages
    again.
    """
    out: list[int] = []
    seen: set[str] = set()
    upto = 0
    for i in drops:
        before = ts[i - 1]
        if before is None:
            continue
        floor = before - _TS_RESET
        if any(t is not None and t >= floor for t in ts[i + 1:i + 1 + _LOOKAHEAD]):
            continue
        seen.update(msgs[upto:i])
        upto = i
        window = msgs[i:i + _LOOKAHEAD]
        if sum(1 for m in window if m in seen) >= _REPEAT_SHARE * len(window):
            out.append(i)
            seen.clear()
    return out


def _boots(seg: _Segment, format_of: Callable[[Sequence[int]], str]) -> Iterator[BootLog]:
    """A segment's boots: one, or more where the time drops say so."""
    cuts = _cuts(seg.msgs, seg.ts, seg.drops) if seg.drops else []
    linenos = seg.linenos()
    if not cuts:
        if seg.msgs:
            yield BootLog(seg.msgs, linenos, seg.ts, format_of(linenos), seg.boot_id,
                          len(seg.noise), seg.banner)
        return
    edges = [0, *cuts, len(seg.msgs)]
    for k, (a, b) in enumerate(pairwise(edges)):
        # A noise line belongs to the boot whose records it came after.
        low = linenos[a] if k else 0
        high = linenos[b] if b < len(linenos) else float("inf")
        noise = sum(1 for n in seg.noise if low <= n < high)
        banner = seg.banner if k == 0 else None
        yield BootLog(seg.msgs[a:b], linenos[a:b], seg.ts[a:b], format_of(linenos[a:b]),
                      seg.boot_id if k == 0 else None, noise, banner)


def _format_of(runs: list[tuple[int, str]]) -> Callable[[Sequence[int]], str]:
    """The format of most of a boot's records (its line numbers, ascending), from the
    runs of the scan; the earlier run on a tie."""
    starts = [first for first, _ in runs]

    def format_of(linenos: Sequence[int]) -> str:
        if not linenos:
            return runs[0][1]
        lo = bisect_left(starts, linenos[0] + 1) - 1
        hi = bisect_left(starts, linenos[-1] + 1) - 1
        if lo == hi:
            return runs[lo][1]
        records: dict[str, int] = {}
        for r in range(lo, hi + 1):
            end = starts[r + 1] if r + 1 < len(starts) else linenos[-1] + 1
            n = bisect_left(linenos, end) - bisect_left(linenos, starts[r])
            records[runs[r][1]] = records.get(runs[r][1], 0) + n
        return max(records, key=records.__getitem__)

    return format_of


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
    # A syslog may hold thousands of other programs' lines before the kernel's first: look
    # further, window by window, before calling the text plain.
    window = _DETECT_LINES
    fmt = "plain"
    for start in range(0, max(len(lines), 1), window):
        fmt = detect_format(lines[start:start + window])
        if fmt != "plain":
            break
    state = _State()
    segments = list(_scan_all(lines, fmt, state))
    format_of = _format_of(state.runs)
    boots: list[BootLog] = []
    for seg in segments:
        for log in _boots(seg, format_of):
            if not log.msgs:
                continue
            # Boots with journal boot IDs are distinct by definition; only anonymous ones
            # can be a console's replay of the ring buffer.
            anonymous = log.boot_id is None and boots and boots[-1].boot_id is None
            if anonymous and _is_replay(boots[-1], log):
                prev = boots[-1]
                keep = log if len(log.msgs) >= len(prev.msgs) else prev
                boots[-1] = BootLog(keep.msgs, keep.linenos, keep.ts, keep.format,
                                    prev.boot_id or log.boot_id,
                                    prev.noise_lines + log.noise_lines, keep.banner)
                continue
            boots.append(log)
    return boots
