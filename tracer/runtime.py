"""Runtime events and the spool file that carries them from the collector (pure).

After boot, the kernel still frees reserved memory now and then: a shrunk crashkernel
(``/sys/kernel/kexec_crash_size``), a released ``reserve_mem`` region, memory hotplug.
``memledger collect`` sees these through eBPF or tracefs kprobes and through the kernel
log, and hands them to the daemon as *event batches*: small JSON Lines files dropped
into the same spool as capture files. The first line is the versioned header, the
others are events::

    {"format": "memledger-events", "format_version": 1, "machine_id": "…32 hex…",
     "boot_id": "…uuid…", "hostname": "web-17", "kernel_release": "6.1.0-47-amd64",
     "source": "bcc", "memledger_version": "0.1.0", "written_at": "2026-…Z",
     "dropped": 0}
    {"seq": 7, "ts": 812.25, "kind": "freed", "function": "crash_free_reserved_phys_range",
     "phys_start": 1744830464, "phys_end": 1879048192, "bytes": 134217728}

``dropped`` counts what the source lost before this batch (kmsg records overwritten
before they were read, perf-buffer samples lost, trace-buffer overruns), so a gap is
reported, never silent. A batch's sha256 identifies it: the daemon stores each batch once.

Event kinds:

* ``freed``: memory given to the page allocator: free_reserved_area (its return value
  in pages), crash_free_reserved_phys_range (the physical range), online_pages;
* ``offlined``: memory taken away by offline_pages;
* ``managed``: the net change of the zones' managed pages, as adjust_managed_page_count
  saw it, summed per calling function (the kernel's own accounting of all of the above);
* ``log``: a kernel-log record about memory, with the bytes it printed (``Freeing … K``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from memledger.tracer.caps import (
    DNS_NAME_MAX,
    KSYM_NAME_LEN,
    PHYS_LIMIT,
    PRINTK_RECORD_MAX,
    UTS_LEN,
    VERSION_MAX,
)
from memledger.tracer.capture import CaptureError, normalise_boot_id, normalise_machine_id
from memledger.tracer.untrusted import UntrustedError, check_text, load_json, parse_time

__all__ = (
    "FORMAT",
    "FORMAT_VERSION",
    "Batch",
    "BatchError",
    "BatchHeader",
    "Kind",
    "RuntimeEvent",
    "Source",
    "is_batch",
    "parse_batch",
    "render_batch",
)

FORMAT = "memledger-events"
FORMAT_VERSION = 1
Source = Literal["bcc", "tracefs", "kmsg"]
Kind = Literal["freed", "offlined", "managed", "log"]
_PREFIX = b'{"format": "memledger-events"'
_INT64 = (-(1 << 63), (1 << 63) - 1)
# An event line is about 150 bytes, so a batch of MAX_EVENTS stays near 7 MiB, well under
# the spool's size cap; the collector writes more events as several batches.
MAX_EVENTS = 50_000
# Longest strings (tracer/caps.py): a kernel symbol, a kernel log record's text; names
# and versions as in a capture's manifest.
_MAX_CHARS = {"function": KSYM_NAME_LEN, "caller": KSYM_NAME_LEN, "detail": PRINTK_RECORD_MAX,
              "hostname": DNS_NAME_MAX, "kernel_release": UTS_LEN,
              "memledger_version": VERSION_MAX}
# Figures that are addresses or amounts of memory: below 2**52 (MAXPHYADDR) in magnitude,
# so that the store's per-boot sums stay far from overflowing. ``phys_end`` is exclusive
# and may be 2**52 itself; ``dropped`` counts records, each at least a byte of memory.
_MAGNITUDE = {"phys_start": PHYS_LIMIT - 1, "phys_end": PHYS_LIMIT, "bytes": PHYS_LIMIT,
              "dropped": PHYS_LIMIT}


class BatchError(ValueError):
    """The bytes are not a usable event batch; the message is one line."""


@dataclass(frozen=True, slots=True)
class RuntimeEvent:
    seq: int                    # increasing within one collector run and source
    ts: float | None            # seconds since boot (CLOCK_MONOTONIC, as dmesg prints it)
    kind: Kind
    function: str               # the probed function, or "kmsg"
    phys_start: int | None = None
    phys_end: int | None = None  # exclusive
    bytes: int | None = None    # signed for ``managed``; None when the source cannot say
    caller: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class BatchHeader:
    machine_id: str
    boot_id: str
    source: Source
    memledger_version: str
    written_at: datetime
    hostname: str | None = None
    kernel_release: str | None = None
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    header: BatchHeader
    events: tuple[RuntimeEvent, ...]


def is_batch(data: bytes) -> bool:
    return data.startswith(_PREFIX)


def _utc(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def render_batch(header: BatchHeader, events: Iterable[RuntimeEvent]) -> bytes:
    head = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "machine_id": header.machine_id, "boot_id": header.boot_id,
            "hostname": header.hostname, "kernel_release": header.kernel_release,
            "source": header.source, "memledger_version": header.memledger_version,
            "written_at": _utc(header.written_at), "dropped": header.dropped}
    lines = [json.dumps(head)]
    for ev in events:
        lines.append(json.dumps({k: v for k, v in asdict(ev).items() if v is not None}))
    return ("\n".join(lines) + "\n").encode()


def _int(obj: dict[str, Any], key: str, where: str, required: bool = False) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise BatchError(f"{where}: {key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BatchError(f"{where}: {key} is not an integer")
    if not _INT64[0] <= value <= _INT64[1]:
        raise BatchError(f"{where}: {key} {value} does not fit in 64 bits")
    _check_magnitude(key, value, where)
    return value


def _check_magnitude(key: str, value: int, where: str) -> None:
    """Refuse an address or amount of memory that no x86-64 machine has."""
    limit = _MAGNITUDE.get(key)
    if limit is not None and key.startswith("phys_") and value < 0:
        raise BatchError(f"{where}: {key} {value} is a negative address")
    if limit is not None and abs(value) > limit:
        raise BatchError(f"{where}: {key} {value:#x} is beyond what a machine can hold "
                         f"(physical addresses have at most 52 bits)")


def _str(obj: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise BatchError(f"{where}: {key} is missing")
        return None
    if not isinstance(value, str):
        raise BatchError(f"{where}: {key} is not a string")
    try:  # a log record's text may hold a tab; names hold no control character
        return check_text(value, f"{where}: {key}", _MAX_CHARS[key], controls=key == "detail")
    except UntrustedError as exc:
        raise BatchError(str(exc)) from None


def _raw_str(obj: dict[str, Any], key: str, where: str) -> str:
    """A required string that a stricter check follows (ids, times)."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise BatchError(f"{where}: {key} is {'missing' if value is None else 'not a string'}")
    return value


def _header(line: bytes) -> BatchHeader:
    where = "line 1"
    try:
        obj = load_json(line, f"{where}: header")
    except UntrustedError as exc:
        raise BatchError(str(exc)) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise BatchError(f"{where}: not a {FORMAT} header")
    if obj.get("format_version") != FORMAT_VERSION:
        raise BatchError(f"{where}: format_version {obj.get('format_version')!r} is not "
                         f"{FORMAT_VERSION}; this memledger cannot read it")
    source = obj.get("source")
    if source not in get_args(Source):
        raise BatchError(f"{where}: source {source!r} is not one of {', '.join(get_args(Source))}")
    try:
        machine_id = normalise_machine_id(_raw_str(obj, "machine_id", where))
        boot_id = normalise_boot_id(_raw_str(obj, "boot_id", where))
        written = parse_time(_raw_str(obj, "written_at", where), "written_at")
    except (CaptureError, UntrustedError) as exc:
        raise BatchError(f"{where}: {exc}") from None
    dropped = _int(obj, "dropped", where) or 0
    if dropped < 0:
        raise BatchError(f"{where}: dropped is negative")
    return BatchHeader(machine_id, boot_id, cast(Source, source),
                       _str(obj, "memledger_version", where, True) or "",
                       written, _str(obj, "hostname", where),
                       _str(obj, "kernel_release", where), dropped)


_EVENT_KEYS = frozenset(f.name for f in fields(RuntimeEvent))


def _event(line: bytes, n: int) -> RuntimeEvent:
    where = f"line {n}"
    try:
        obj = load_json(line, where)
    except UntrustedError as exc:
        raise BatchError(str(exc)) from None
    if not isinstance(obj, dict):
        raise BatchError(f"{where}: not a JSON object")
    unknown = set(obj) - _EVENT_KEYS
    if unknown:
        raise BatchError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    kind = obj.get("kind")
    if kind not in get_args(Kind):
        raise BatchError(f"{where}: kind {kind!r} is not one of {', '.join(get_args(Kind))}")
    ts = obj.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
        raise BatchError(f"{where}: ts is not a number")
    start, end = _int(obj, "phys_start", where), _int(obj, "phys_end", where)
    if start is not None and end is not None and end < start:
        raise BatchError(f"{where}: phys_end {end:#x} is below phys_start {start:#x}")
    size = _int(obj, "bytes", where)
    if size is not None and size < 0 and kind != "managed":
        raise BatchError(f"{where}: negative bytes for a {kind} event")
    return RuntimeEvent(
        seq=_int(obj, "seq", where, True) or 0,
        ts=None if ts is None else float(ts),
        kind=cast(Kind, kind), function=_str(obj, "function", where, True) or "",
        phys_start=start, phys_end=end, bytes=size,
        caller=_str(obj, "caller", where), detail=_str(obj, "detail", where))


def parse_batch(data: bytes) -> Batch:
    """Read an event batch strictly. Raises :class:`BatchError` naming the line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise BatchError("line 1: empty file")
    if len(lines) - 1 > MAX_EVENTS:
        raise BatchError(f"{len(lines) - 1} events is over the {MAX_EVENTS}-event cap")
    header = _header(lines[0])
    return Batch(header, tuple(_event(line, n) for n, line in enumerate(lines[1:], 2)))
