"""ftrace ``trace`` text: function-tracer lines and kprobe/kretprobe event lines.

Examples from Debian 6.1.0-47 and 6.12.117 under OVMF (see tests/fixtures)::

    init-1  [001] .....  2.330940: free_reserved_area <-efi_free_boot_services
    swapper/0-1 [000] .....  0.877188: free_reserved_area: (free_reserved_area+0x4/0x170) start=0xffff890cbfed8000 end=0xffff890cbfeec000 poison=-1 s=(fault)
    swapper/0-1 [000] .....  0.877732: free_reserved_area_ret: (efi_free_boot_services+0x4f/0xb0 <- free_reserved_area) pages=20

The kprobe addresses of free_reserved_area are direct-map virtual addresses (KASLR), not
physical ones; a ``base=@page_offset_base`` argument, when the probe defines one, turns
them into physical addresses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ("TraceEvent", "TraceLog", "parse_trace")

_LINE = re.compile(
    r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s\[\]]{4,6})\s+)?(?P<ts>\d+\.\d+):\s+(?P<body>.*)$"
)
_FUNC = re.compile(r"^(?P<fn>[\w.$]+) <-(?P<parent>[\w.$]+)\s*$")
_EVENT = re.compile(r"^(?P<name>[\w.:-]+):\s*(?:\((?P<site>[^)]*)\))?\s*(?P<args>.*)$")
_ARG = re.compile(r'(?P<k>[\w$]+)=(?P<v>"(?:[^"\\]|\\.)*"|\S+)')
_ENTRIES = re.compile(r"^#\s*entries-in-buffer/entries-written:\s*(?P<e>\d+)/(?P<w>\d+)")
_TRACER = re.compile(r"^#\s*tracer:\s*(?P<t>\S+)")


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One trace line. ``parent`` is set for function-tracer lines, ``site`` for probes."""

    lineno: int
    task: str
    pid: int
    cpu: int
    ts: float
    name: str
    parent: str | None = None
    site: str | None = None
    args: dict[str, str] = field(default_factory=dict)

    @property
    def is_function(self) -> bool:
        return self.parent is not None

    @property
    def return_site(self) -> tuple[str, str] | None:
        """For a kretprobe, ``(caller, probed_function)``; else None."""
        if self.site is None or " <- " not in self.site:
            return None
        caller, _, func = self.site.partition(" <- ")
        return caller.split("+", 1)[0].strip(), func.strip()

    def int_arg(self, name: str) -> int | None:
        value = self.args.get(name)
        if value is None:
            return None
        try:
            return int(value, 0)
        except ValueError:
            return None


@dataclass(slots=True)
class TraceLog:
    tracer: str | None = None
    entries: int | None = None
    written: int | None = None
    events: list[TraceEvent] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def overflowed(self) -> bool | None:
        """True when the ring buffer dropped entries (written > kept)."""
        if self.entries is None or self.written is None:
            return None
        return self.written > self.entries


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_trace(text: str) -> TraceLog:
    """Parse the text of a tracefs ``trace`` file."""
    out = TraceLog()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("#"):
            if (m := _ENTRIES.match(line)) is not None:
                out.entries, out.written = int(m.group("e")), int(m.group("w"))
            elif (t := _TRACER.match(line)) is not None:
                out.tracer = t.group("t")
            continue
        m = _LINE.match(line)
        if m is None:
            out.bad_lines.append((lineno, "not a trace line"))
            continue
        head = (lineno, m.group("task").strip(), int(m.group("pid")), int(m.group("cpu")),
                float(m.group("ts")))
        body = m.group("body")
        f = _FUNC.match(body)
        if f is not None:
            out.events.append(TraceEvent(*head, name=f.group("fn"), parent=f.group("parent")))
            continue
        e = _EVENT.match(body)
        if e is None:
            out.bad_lines.append((lineno, "unrecognised trace event"))
            continue
        args = {a.group("k"): _unquote(a.group("v")) for a in _ARG.finditer(e.group("args"))}
        out.events.append(TraceEvent(*head, name=e.group("name"), site=e.group("site"), args=args))
    return out
