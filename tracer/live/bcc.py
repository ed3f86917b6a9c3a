"""The eBPF back end, through bcc (Debian's python3-bpfcc; ``import bcc``).

bcc is imported when :meth:`BccProbes.open` runs, never at import time, so the rest of
memledger works where it is missing. (The PyPI package called ``bcc`` is an unrelated
lattice library; bcc comes from the distribution, so memledger's venv is made with
``--system-site-packages``.)

Two ways to attach, tried in this order:

* ``kfunc``: fentry/fexit programs on BPF trampolines (x86-64, v5.5+, kernel BTF)
  that write to a BPF ring buffer (v5.8+). Neither needs ``perf_event_open``, so this
  works with CAP_BPF and CAP_PERFMON alone under Debian's ``perf_event_paranoid=3``
  (Debian's kernel patch makes level 3 the default, and at level 3 perf_event_open
  needs CAP_SYS_ADMIN). The calling function is taken from a kernel stack id.
* ``kprobe``: kprobes and kretprobes that write to a perf buffer, for kernels without
  BTF or trampolines. These go through perf_event_open, so on Debian they need
  CAP_SYS_ADMIN or ``kernel.perf_event_paranoid`` at 2 or below.

Entries and returns go to user space one record per call: these functions run rarely.
adjust_managed_page_count runs once per page freed, so it is summed in the kernel
instead, in a hash map keyed by the caller (kprobe) or the stack id (kfunc), and
drained at each flush.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, Literal

from memledger.tracer.probes import PROBES, Probe, ProbeHit, choose_probes

__all__ = ("KPROBE_TEXT", "BccError", "BccProbes", "Mode", "kallsyms_address", "kfunc_text")

Mode = Literal["kfunc", "kprobe"]


class BccError(Exception):
    """bcc cannot be used; the message says why, in one line."""


_COMMON = r"""
struct hit_t {
    u64 ts;
    u64 a0;
    u64 a1;
    u64 a2;
    s64 ret;
    u64 ip;
    s64 stack;
    u32 pid;
    u32 probe;
    char s[32];
};

static inline u64 read_u64(u64 addr) {
    u64 v = 0;
    if (addr)
        bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static inline void begin(struct hit_t *h, u32 probe) {
    h->ts = bpf_ktime_get_ns();
    h->pid = bpf_get_current_pid_tgid();
    h->probe = probe;
    h->stack = -1;
}
"""

# kprobes: one handler per probe; the probe's index in PROBES is its id in the record.
KPROBE_TEXT = "#include <uapi/linux/ptrace.h>\n" + _COMMON + r"""
BPF_PERF_OUTPUT(hits);
BPF_HASH(managed, u64, s64, 4096);

int fra(struct pt_regs *ctx) {
    struct hit_t h = {};
    begin(&h, ID_fra);
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
    begin(&h, ID_crash_free);
    h.a0 = PT_REGS_PARM1(ctx);
    h.a1 = PT_REGS_PARM2(ctx);
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}

int crash_shrink(struct pt_regs *ctx) {
    struct hit_t h = {};
    begin(&h, ID_crash_shrink);
    h.a0 = PT_REGS_PARM1(ctx);
    h.a1 = read_u64(CRASHK_RES);
    h.a2 = read_u64(CRASHK_RES ? CRASHK_RES + 8 : 0);
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}

static inline int pages(struct pt_regs *ctx, u32 probe) {
    struct hit_t h = {};
    begin(&h, probe);
    h.a0 = PT_REGS_PARM1(ctx);
    h.a1 = PT_REGS_PARM2(ctx);
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}
int online(struct pt_regs *ctx) { return pages(ctx, ID_online); }
int offline(struct pt_regs *ctx) { return pages(ctx, ID_offline); }

static inline int ret_long(struct pt_regs *ctx, u32 probe) {
    struct hit_t h = {};
    begin(&h, probe);
    h.ret = (s64)PT_REGS_RC(ctx);
    h.ip = PT_REGS_IP(ctx);   /* a kretprobe sees the real return address here */
    hits.perf_submit(ctx, &h, sizeof(h));
    return 0;
}
static inline int ret_int(struct pt_regs *ctx, u32 probe) {
    struct hit_t h = {};
    begin(&h, probe);
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

# kfunc: the programs are named kfunc__<function> / kretfunc__<function>, and bcc
# attaches every such program when it loads, so only the chosen probes are written out.
# Arguments are declared as integers: BPF_PROG casts each ctx slot to the declared type.
_KFUNC_HEAD = _COMMON + r"""
BPF_RINGBUF_OUTPUT(hits, 16);
BPF_HASH(managed, s64, s64, 4096);
BPF_STACK_TRACE(stacks, 4096);
BPF_ARRAY(lost, u64, 1);

static inline void emit(struct hit_t *h) {
    if (hits.ringbuf_output(h, sizeof(*h), 0) != 0) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
}
"""

def _fexit(function: str, args: str, event: str) -> str:
    """An fexit program: the return value (the last of ``args``) and the stack, from which
    the caller is read."""
    return f"""
KRETFUNC_PROBE({function}, {args}) {{
    struct hit_t h = {{}};
    begin(&h, ID_{event});
    h.ret = ret;
    h.stack = stacks.get_stackid(ctx, 0);
    emit(&h);
    return 0;
}}"""


_PAGES_ARGS = "u64 pfn, u64 nr_pages, u64 zone, u64 group, int ret"


def _pages(function: str, event: str) -> str:
    """The fentry program of online_pages/offline_pages(pfn, nr_pages, …)."""
    return f"""
KFUNC_PROBE({function}, u64 pfn, u64 nr_pages) {{
    struct hit_t h = {{}};
    begin(&h, ID_{event});
    h.a0 = pfn;
    h.a1 = nr_pages;
    emit(&h);
    return 0;
}}"""


_KFUNC: dict[str, str] = {
    "fra": r"""
KFUNC_PROBE(free_reserved_area, u64 start, u64 end, int poison, u64 s) {
    struct hit_t h = {};
    begin(&h, ID_fra);
    h.a0 = start;
    h.a1 = end;
    h.a2 = read_u64(PAGE_OFFSET_BASE);
    if (s)
        bpf_probe_read_kernel_str(h.s, sizeof(h.s), (void *)s);
    emit(&h);
    return 0;
}""",
    "fra_ret": _fexit("free_reserved_area", "u64 start, u64 end, int poison, u64 s, long ret",
                      "fra_ret"),
    "crash_free": r"""
KFUNC_PROBE(crash_free_reserved_phys_range, u64 begin_, u64 end) {
    struct hit_t h = {};
    begin(&h, ID_crash_free);
    h.a0 = begin_;
    h.a1 = end;
    h.stack = stacks.get_stackid(ctx, 0);
    emit(&h);
    return 0;
}""",
    "crash_shrink": r"""
KFUNC_PROBE(crash_shrink_memory, u64 new_size) {
    struct hit_t h = {};
    begin(&h, ID_crash_shrink);
    h.a0 = new_size;
    h.a1 = read_u64(CRASHK_RES);
    h.a2 = read_u64(CRASHK_RES ? CRASHK_RES + 8 : 0);
    emit(&h);
    return 0;
}""",
    "crash_shrink_ret": _fexit("crash_shrink_memory", "u64 new_size, int ret", "crash_shrink_ret"),
    "online": _pages("online_pages", "online"),
    "online_ret": _fexit("online_pages", _PAGES_ARGS, "online_ret"),
    "offline": _pages("offline_pages", "offline"),
    "offline_ret": _fexit("offline_pages", _PAGES_ARGS, "offline_ret"),
    "amc": r"""
KFUNC_PROBE(adjust_managed_page_count, u64 page, long count) {
    s64 id = stacks.get_stackid(ctx, 0);
    managed.atomic_increment(id, count);
    return 0;
}""",
}


def kfunc_text(chosen: Sequence[Probe]) -> str:
    """The kfunc program for these probes (each function gets at most one fentry and
    one fexit program)."""
    return _KFUNC_HEAD + "".join(_KFUNC[p.event] for p in chosen) + "\n"


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
                ("stack", ctypes.c_int64), ("pid", ctypes.c_uint32), ("probe", ctypes.c_uint32),
                ("s", ctypes.c_char * 32)]


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


def caller_in(frames: Sequence[str], function: str) -> str | None:
    """The function that called ``function``, from a symbolized kernel stack (innermost
    first). A trampoline program's stack starts in the BPF program and the trampoline;
    the traced function shows once, at its patched first instruction."""
    for i, name in enumerate(frames):
        if name == function:
            for caller in frames[i + 1:]:
                if caller not in ("", "[unknown]"):
                    return caller
            return None
    return None


class BccProbes:
    source = "bcc"

    def __init__(self, kallsyms: str = "/proc/kallsyms",
                 modes: Sequence[Mode] = ("kfunc", "kprobe")) -> None:
        self.kallsyms = kallsyms
        self.modes = tuple(modes)
        self.mode: Mode | None = None
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
        chosen, missing = choose_probes(available)
        if not chosen:
            raise BccError("none of the probed functions is traceable: " + ", ".join(missing))
        ids = {p.event: i for i, p in enumerate(PROBES)}
        cflags = [f"-DID_{p.event}={ids[p.event]}" for p in PROBES]
        cflags += [f"-DPAGE_OFFSET_BASE={kallsyms_address('page_offset_base', self.kallsyms)}ULL",
                   f"-DCRASHK_RES={kallsyms_address('crashk_res', self.kallsyms)}ULL"]
        reasons: list[str] = []
        for mode in self.modes:
            try:
                if mode == "kfunc":
                    self._open_kfunc(BPF, chosen, cflags)
                else:
                    self._open_kprobe(BPF, chosen, cflags)
            except BccError as exc:
                reasons.append(f"{mode}: {exc}")
                self.close()
                continue
            self.mode = mode
            self.missing = missing + self.missing
            return
        raise BccError("; ".join(reasons))

    def _open_kfunc(self, bpf_class: Any, chosen: list[Probe], cflags: list[str]) -> None:
        if not bpf_class.support_kfunc():
            raise BccError("no BPF trampolines here (needs x86-64, Linux 5.5+ and kernel BTF)")
        try:  # bcc attaches every kfunc__/kretfunc__ program as it loads them
            self.bpf = bpf_class(text=kfunc_text(chosen), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exceptions for compile, load and attach
            raise BccError(f"could not load the trampoline programs: {exc}") from None
        self.attached = list(chosen)
        self.bpf["hits"].open_ring_buffer(self._on_ring)

    def _open_kprobe(self, bpf_class: Any, chosen: list[Probe], cflags: list[str]) -> None:
        try:
            self.bpf = bpf_class(text=KPROBE_TEXT, cflags=cflags)
        except Exception as exc:
            raise BccError(f"could not build the probes: {exc}") from None
        self.missing = []
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
                        "perf_event_open need CAP_SYS_ADMIN); ")
            raise BccError(f"no kprobe could be attached: {hint}" + ", ".join(self.missing))
        self.bpf["hits"].open_perf_buffer(self._on_perf, page_cnt=64, lost_cb=self._on_lost)

    def _symbols(self, stack_id: int) -> list[str]:
        if stack_id < 0:
            return []
        try:
            addrs = list(self.bpf["stacks"].walk(stack_id))
        except Exception:  # KeyError from bcc's table when the id was overwritten
            return []
        return [self.bpf.ksym(a).decode(errors="replace") for a in addrs]

    def _on_ring(self, _ctx: Any, data: Any, _size: int) -> None:
        self._on_hit(ctypes.cast(data, ctypes.POINTER(_Hit)).contents)

    def _on_perf(self, _cpu: int, data: Any, _size: int) -> None:
        self._on_hit(ctypes.cast(data, ctypes.POINTER(_Hit)).contents)

    def _on_hit(self, h: _Hit) -> None:
        if h.probe >= len(PROBES):
            return
        p = PROBES[h.probe]
        site: str | None = None
        if h.stack >= 0:
            site = caller_in(self._symbols(h.stack), p.function)
        elif p.is_return and h.ip:
            site = self.bpf.ksym(h.ip).decode(errors="replace")
            site = None if site in ("[unknown]", "") else site
        self.hits.append(ProbeHit(p.event, h.pid, h.ts / 1e9, _args(p, h), site))

    def _on_lost(self, count: int) -> None:
        self.lost += count

    def read(self, timeout_ms: int = 0) -> tuple[list[ProbeHit], int]:
        """Hits since the last call (waiting up to ``timeout_ms``), and lost records."""
        if self.mode == "kfunc":
            self.bpf.ring_buffer_poll(timeout=timeout_ms)
            table = self.bpf["lost"]
            key = table.Key(0)
            self.lost += table[key].value
            table[key] = table.Leaf(0)
        else:
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
            k, pages = getattr(key, "value", key), getattr(value, "value", value)
            if self.mode == "kfunc":
                name = caller_in(self._symbols(k), "adjust_managed_page_count") or "?"
            else:
                name = self.bpf.ksym(k).decode(errors="replace")
            out[name] = out.get(name, 0) + pages
        return out

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
        self.attached = []
