"""Kernel command lines for lab boots: the base console arguments and boot-time tracing.

The tracing arguments come from the probe catalogue, :mod:`memledger.tracer.probes`.
``trace_clock=global`` is added because without it, 6.1 under TCG switches clocks in
late_initcall ("Unstable clock detected") and that switch resets the ring buffer.
"""

from __future__ import annotations

from memledger.tracer.probes import BOOT_PROBES, BOOT_TRACE_FUNCTIONS

__all__ = (
    "BASE_ARGS",
    "KPROBE_EVENTS",
    "TRACE_FUNCTIONS",
    "join_args",
    "tracing_args",
)

BASE_ARGS = ("console=ttyS0,115200", "log_buf_len=16M", "panic=-1")

# The boot-time probes, from the one catalogue (tracer/probes.py).
TRACE_FUNCTIONS = BOOT_TRACE_FUNCTIONS
KPROBE_EVENTS = tuple(p.boot_arg for p in BOOT_PROBES)


def tracing_args(trace_buf_size: str = "4M") -> tuple[str, ...]:
    """The boot-time tracing arguments that work on stock Debian 6.1 and 6.12 kernels."""
    return (
        f"trace_buf_size={trace_buf_size}",
        "trace_clock=global",
        "ftrace=function",
        "ftrace_filter=" + ",".join(TRACE_FUNCTIONS),
        "kprobe_event=" + ";".join(KPROBE_EVENTS),
    )


def join_args(*groups: str | tuple[str, ...] | list[str]) -> str:
    """One command line from argument groups, dropping empty ones and exact duplicates."""
    out: list[str] = []
    for group in groups:
        items = group.split() if isinstance(group, str) else list(group)
        for item in items:
            if item and item not in out:
                out.append(item)
    return " ".join(out)
