"""free_reserved_area() calls seen by kprobe/kretprobe events in a boot trace (pure).

The lab's probes (:mod:`memledger.lab.bootargs`) record, at entry,
``start end poison s base`` and, at return, ``pages``::

    free_reserved_area: (free_reserved_area+0x4/0x170) start=0xffff8e8c3d7ab000 end=0xffff8e8c3d8a7000 poison=204 s="initrd" base=0xffff8e8bc0000000
    free_reserved_area_ret: (do_populate_rootfs+0x18e/0x1e0 <- free_reserved_area) pages=252

Each entry is paired with the next return on the same pid. ``s`` is the name the kernel
prints in ``Freeing <s> memory: NK`` (NULL, shown as ``(fault)``, for the EFI free).
"""

from __future__ import annotations

from dataclasses import dataclass

from memledger.tracer.ftrace import TraceEvent, TraceLog

__all__ = ("AreaFree", "reserved_area_frees")

FUNCTION = "free_reserved_area"
_NO_NAME = ("(fault)", "")


@dataclass(frozen=True, slots=True)
class AreaFree:
    caller: str  # the function free_reserved_area returned to
    pages: int | None  # its return value: pages handed to the buddy allocator
    name: str | None = None  # the ``s`` argument, when recorded and not NULL
    start: int | None = None  # direct-map (or kernel-image) virtual addresses
    end: int | None = None
    base: int | None = None  # page_offset_base, when the probe recorded it
    lineno: int = 0

    @property
    def phys_range(self) -> tuple[int, int] | None:
        """Physical [start, end) for direct-map addresses, when the base was recorded."""
        if self.start is None or self.end is None or self.base is None or self.start < self.base:
            return None
        return self.start - self.base, self.end - self.base


def _return_pages(e: TraceEvent) -> int | None:
    if "pages" in e.args:
        return e.int_arg("pages")
    numeric = [v for v in (e.int_arg(k) for k in e.args) if v is not None]
    return numeric[0] if len(numeric) == 1 else None


def reserved_area_frees(trace: TraceLog | None) -> list[AreaFree]:
    """Every free_reserved_area call whose kretprobe fired, with its entry arguments when
    an entry probe on the same pid came just before."""
    if trace is None:
        return []
    out: list[AreaFree] = []
    pending: dict[int, TraceEvent] = {}
    for e in trace.events:
        if e.is_function:
            continue
        ret = e.return_site
        if ret is None:
            if e.site is not None and e.site.startswith(FUNCTION + "+"):
                pending[e.pid] = e
            continue
        caller, func = ret
        if func != FUNCTION:
            continue
        entry = pending.pop(e.pid, None)
        if entry is None:
            out.append(AreaFree(caller, _return_pages(e), lineno=e.lineno))
            continue
        name = entry.args.get("s")
        out.append(AreaFree(caller, _return_pages(e), None if name in _NO_NAME else name,
                            entry.int_arg("start"), entry.int_arg("end"), entry.int_arg("base"),
                            e.lineno))
    return out
