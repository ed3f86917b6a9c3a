"""The rows of the ``events`` table for one boot (pure).

One row per thing the kernel did that a source recorded:

- ``memblock``: a ``memblock=debug`` range line (reserve, free, free_late, …), with the
  physical range, the caller and the v6.16+ flags;
- ``freeing``: a ``Freeing <what> memory: NK`` line, ``detail`` holding ``<what>``;
- ``ftrace``: a function-tracer line (``caller`` is the parent function);
- ``kprobe``: a kprobe or kretprobe line; free_reserved_area's entry gets its physical
  range when the probe recorded ``base=@page_offset_base``, its return its size in bytes.

Values that do not fit a signed 64-bit column (only malformed input has them) are NULL.
"""

from __future__ import annotations

from typing import Any

from memledger.tracer.evidence import Evidence
from memledger.tracer.ftrace import TraceEvent

__all__ = ("PAGE_SIZE", "event_rows")

PAGE_SIZE = 4096
_INT64_MAX = (1 << 63) - 1
_FREE_RESERVED_AREA = "free_reserved_area"


def _i64(value: int | None) -> int | None:
    return value if value is not None and 0 <= value <= _INT64_MAX else None


def _row(source: str, ts: float | None, function: str, start: int | None = None,
         end: int | None = None, size: int | None = None, caller: str | None = None,
         flags: int | None = None, detail: str | None = None) -> dict[str, Any]:
    return {"source": source, "ts": ts, "function": function, "phys_start": _i64(start),
            "phys_end": _i64(end), "size": _i64(size), "caller": caller or None,
            "flags": _i64(flags), "detail": detail}


def _probe_row(e: TraceEvent) -> dict[str, Any]:
    detail = " ".join(f"{k}={v}" for k, v in e.args.items()) or None
    ret = e.return_site
    if ret is not None:
        caller, func = ret
        pages = e.int_arg("pages") if func == _FREE_RESERVED_AREA else None
        return _row("kprobe", e.ts, e.name, size=pages * PAGE_SIZE if pages is not None else None,
                    caller=caller, detail=detail)
    start = end = None
    base = e.int_arg("base")
    if e.site and e.site.startswith(_FREE_RESERVED_AREA + "+") and base is not None:
        vstart, vend = e.int_arg("start"), e.int_arg("end")
        if vstart is not None and vend is not None and base <= vstart <= vend:
            start, end = vstart - base, vend - base
    size = end - start if start is not None and end is not None else None
    return _row("kprobe", e.ts, e.name, start, end, size, caller=e.site, detail=detail)


def event_rows(ev: Evidence) -> list[dict[str, Any]]:
    """Event rows in source order (log first, then trace), numbered by ``seq``."""
    rows: list[dict[str, Any]] = []
    log = ev.log
    if log is not None:
        for at, m in log.memblock:
            rows.append(_row("memblock", at.ts, f"memblock_{m.op}", m.start, m.end,
                             m.end - m.start, m.caller, m.flags))
        for f in log.freeing:
            # The EFI summary line is efi_free_boot_services()'s own; every other
            # "Freeing … memory" line is printed by free_reserved_area().
            fn = "efi_free_boot_services" if f.name == "EFI boot services" else _FREE_RESERVED_AREA
            rows.append(_row("freeing", f.at.ts, fn, size=f.kib * 1024, caller=f.prefix,
                             detail=f.name))
    if ev.trace is not None:
        for e in ev.trace.events:
            if e.is_function:
                rows.append(_row("ftrace", e.ts, e.name, caller=e.parent))
            else:
                rows.append(_probe_row(e))
    for seq, row in enumerate(rows):
        row["seq"] = seq
    return rows
