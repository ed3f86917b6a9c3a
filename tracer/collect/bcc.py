"""The eBPF back end, through bcc (Debian's python3-bpfcc; ``import bcc``).

bcc is imported when :meth:`BccProbes.open` runs, never at import time, so the rest of
memledger works where it is missing. (The PyPI package called ``bcc`` is an unrelated
lattice library; bcc comes from the distribution, so memledger's venv is made with
``--system-site-packages``.)

Entries and returns go to user space through a perf buffer, one record per call: these
functions run rarely. adjust_managed_page_count runs once per page freed, so it is
summed in the kernel instead, in a hash map keyed by the calling address, and drained
at each flush.
"""

from __future__ import annotations

import ctypes
from typing import Any

from memledger.tracer.probes import PROBES, Probe, ProbeHit, choose_probes

__all__ = ("BPF_TEXT", "BccError", "BccProbes", "kallsyms_address")


class BccError(Exception):
    """bcc cannot be used; the message says why, in one line."""


# One handler per probe; the probe's index in PROBES is its id in the record.
BPF_TEXT = r"""
#include <uapi/linux/ptrace.h>

struct hit_t {
    u64 ts;
    u64 a0;
    u64 a1;
    u64 a2;
    s64 ret;
    u64 ip;
    u32 pid;
    u32 probe;
    char s[32];
};

BPF_PERF_OUTPUT(hits);
BPF_HASH(managed, u64, s64, 4096);

static inline u64 read_u64(u64 addr) {
    u64 v = 0;
    if (addr)
        bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static inline void start(struct hit_t *h, u32 probe) {
    h->ts = bpf_ktime_get_ns();
    h->pid = bpf_get_current_pid_tgid();
    h->probe = probe;
}

int fra(struct pt_regs *ctx) {
    struct hit_t h = {};
    start(&h, ID_fra);
    h.a0 = PT_REGS_PARM1(ctx);
    h.a1 = PT_REGS_PARM2(ctx);
    h.a2 = read_u64(PAGE_OFFSET_BASE);
    const char *s = (const char *)PT_REGS_PARM4(ctx);
    if (s)
        bpf_probe_read_kernel_str(h.s, sizeof(h.s), s);
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}

int crash_free(struct pt_regs *ctx) {
    struct hit_t h = {};
    start(&h, ID_crash_free);
    h.a0 = PT_REGS_PARM1(ctx);
    h.a1 = PT_REGS_PARM2(ctx);
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}

int crash_shrink(struct pt_regs *ctx) {
    struct hit_t h = {};
    start(&h, ID_crash_shrink);
    h.a0 = PT_REGS_PARM1(ctx);
    h.a1 = read_u64(CRASHK_RES);
    h.a2 = read_u64(CRASHK_RES ? CRASHK_RES + 8 : 0);
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}

static inline int pages(struct pt_regs *ctx, u32 probe) {
    struct hit_t h = {};
    start(&h, probe);
    h.a0 = PT_REGS_PARM1(ctx);
    h.a1 = PT_REGS_PARM2(ctx);
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}
int online(struct pt_regs *ctx) { return pages(ctx, ID_online); }
int offline(struct pt_regs *ctx) { return pages(ctx, ID_offline); }

static inline int ret_long(struct pt_regs *ctx, u32 probe) {
    struct hit_t h = {};
    start(&h, probe);
    h.ret = (s64)PT_REGS_RC(ctx);
    h.ip = PT_REGS_IP(ctx);   /* a kretprobe sees the real return address here */
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}
static inline int ret_int(struct pt_regs *ctx, u32 probe) {
    struct hit_t h = {};
    start(&h, probe);
    h.ret = (s64)(int)PT_REGS_RC(ctx);
    h.ip = PT_REGS_IP(ctx);
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}
int fra_ret(struct pt_regs *ctx) { return ret_long(ctx, ID_fra_ret); }
int crash_shrink_ret(struct pt_regs *ctx) { return ret_int(ctx, ID_crash_shrink_ret); }
int online_ret(struct pt_regs *ctx) { return ret_int(ctx, ID_online_ret); }
int offline_ret(struct pt_regs *ctx) { return ret_int(ctx, ID_offline_ret); }

int amc(struct pt_regs *ctx) {
    u64 caller = read_u64(PT_REGS_SP(ctx));   /* at entry, the return address */
    s64 count = (s64)PT_REGS_PARM2(ctx);
    managed.atomic_increment(caller, count);
    return 0;
}
"""


def kallsyms_address(name: str, path: str = "/proc/kallsyms") -> int:
    """A kernel symbol's address; 0 when absent or hidden (no CAP_SYSLOG)."""
    with open(path, "rb") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == name.encode():
                return int(parts[0], 16)
    return 0


def _paranoid(path: str = "/proc/sys/kernel/perf_event_paranoid") -> int:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return -1


class _Hit(ctypes.Structure):
    _fields_ = [("ts", ctypes.c_uint64), ("a0", ctypes.c_uint64), ("a1", ctypes.c_uint64),
                ("a2", ctypes.c_uint64), ("ret", ctypes.c_int64), ("ip", ctypes.c_uint64),
                ("pid", ctypes.c_uint32), ("probe", ctypes.c_uint32), ("s", ctypes.c_char * 32)]


def _args(p: Probe, h: _Hit) -> dict[str, int | str]:
    if p.event == "fra":
        return {"start": h.a0, "end": h.a1, "base": h.a2, "s": h.s.decode(errors="replace")}
    if p.event == "crash_free":
        return {"begin": h.a0, "end": h.a1}
    if p.event == "crash_shrink":
        return {"new_size": h.a0, "start": h.a1, "end": h.a2}
    if p.event in ("online", "offline"):
        return {"pfn": h.a0, "nr_pages": h.a1}
    return {"ret": h.ret}


class BccProbes:
    source = "bcc"

    def __init__(self, kallsyms: str = "/proc/kallsyms") -> None:
        self.kallsyms = kallsyms
        self.attached: list[Probe] = []
        self.missing: list[str] = []
        self.hits: list[ProbeHit] = []
        self.lost = 0
        self.bpf: Any = None

    def open(self) -> None:
        try:
            from bcc import BPF  # type: ignore[import-not-found]  # Debian's python3-bpfcc
        except ImportError as exc:
            raise BccError(f"bcc is not importable ({exc}); install python3-bpfcc, and make "
                           "the venv with --system-site-packages") from None
        functions = {p.function for p in PROBES}
        available = {f for f in functions if BPF.get_kprobe_functions(f"^{f}$".encode())}
        chosen, self.missing = choose_probes(available)
        ids = {p.event: i for i, p in enumerate(PROBES)}
        cflags = [f"-DID_{p.event}={i}" for p, i in ((p, ids[p.event]) for p in PROBES)]
        cflags += [f"-DPAGE_OFFSET_BASE={kallsyms_address('page_offset_base', self.kallsyms)}ULL",
                   f"-DCRASHK_RES={kallsyms_address('crashk_res', self.kallsyms)}ULL"]
        try:
            self.bpf = BPF(text=BPF_TEXT, cflags=cflags)
        except Exception as exc:  # bcc raises bare Exceptions for compile and load errors
            raise BccError(f"bcc could not build the probes: {exc}") from None
        for p in chosen:
            try:
                if p.is_return:
                    self.bpf.attach_kretprobe(event=p.function.encode(), fn_name=p.event.encode())
                else:
                    self.bpf.attach_kprobe(event=p.function.encode(), fn_name=p.event.encode())
            except Exception as exc:
                self.missing.append(f"{p.function} ({exc})")
                continue
            self.attached.append(p)
        if not self.attached:
            hint = ""
            if _paranoid() > 2:
                hint = ("kernel.perf_event_paranoid is above 2 (Debian's default of 3 makes "
                        "perf_event_open need CAP_SYS_ADMIN; install "
                        "deploy/sysctl/memledger-collector.conf); ")
            raise BccError(f"none of the runtime probes could be attached: {hint}"
                           + ", ".join(self.missing))
        self.bpf["hits"].open_perf_buffer(self._on_hit, page_cnt=64, lost_cb=self._on_lost)

    def _on_hit(self, _cpu: int, data: Any, _size: int) -> None:
        h = ctypes.cast(data, ctypes.POINTER(_Hit)).contents
        if h.probe >= len(PROBES):
            return
        p = PROBES[h.probe]
        site = None
        if p.is_return and h.ip:
            site = self.bpf.ksym(h.ip).decode(errors="replace")
            site = None if site in ("[unknown]", "") else site
        self.hits.append(ProbeHit(p.event, h.pid, h.ts / 1e9, _args(p, h), site))

    def _on_lost(self, count: int) -> None:
        self.lost += count

    def read(self, timeout_ms: int = 0) -> tuple[list[ProbeHit], int]:
        """Hits since the last call (waiting up to ``timeout_ms``), and lost records."""
        self.bpf.perf_buffer_poll(timeout=timeout_ms)
        hits, self.hits = self.hits, []
        lost, self.lost = self.lost, 0
        return hits, lost

    def drain_managed(self) -> dict[str, int]:
        """Net managed-page changes per calling function since the last drain."""
        table = self.bpf["managed"]
        try:  # atomic per entry (BPF_MAP_LOOKUP_AND_DELETE_BATCH, v5.6+)
            items = list(table.items_lookup_and_delete_batch())
        except Exception:
            items = list(table.items())
            for key, _ in items:
                del table[key]
        out: dict[str, int] = {}
        for key, value in items:
            # items() gives ctypes values; items_lookup_and_delete_batch() plain ints
            # (seen on bcc 0.26 in the e2e guest).
            addr, pages = getattr(key, "value", key), getattr(value, "value", value)
            name = self.bpf.ksym(addr).decode(errors="replace")
            out[name] = out.get(name, 0) + pages
        return out

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
