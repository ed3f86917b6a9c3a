"""Runtime collection on this host: event batches, the store, the daemon, /dev/kmsg,
probe assembly and `memledger collect`. The probes themselves (bcc and tracefs) need a
kernel with kprobe events and headers, which this host's kernel lacks; the guest e2e
test (tests/e2e/test_guest.py) runs them for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from capturegen import boot_id, machine_id, make_capture
from conftest import MEMLEDGER
from daemonrun import Daemon, drop, wait_for
from memledger.store.db import make_engine, resolve_url
from memledger.store.migrate import upgrade
from memledger.store.runtime import ingest_batch, runtime_totals
from memledger.tracer.ftrace import parse_trace
from memledger.tracer.kmsg import SeqTracker, memory_event, parse_record
from memledger.tracer.live.bcc import caller_in, kfunc_text
from memledger.tracer.probes import PROBES, Assembler, choose_probes, hit_from_trace
from memledger.tracer.runtime import (
    BatchError,
    BatchHeader,
    RuntimeEvent,
    parse_batch,
    render_batch,
)

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CRASH = RuntimeEvent(1, 812.25, "freed", "crash_free_reserved_phys_range",
                     0x70000000, 0x78000000, 128 << 20, "crash_shrink_memory")


def header(host: int = 1, boot: int = 1, source: str = "bcc", dropped: int = 0) -> BatchHeader:
    return BatchHeader(machine_id(host), boot_id(host, boot), source, "0.1.0", NOW,  # type: ignore[arg-type]
                       "web-1", "6.1.0-50-amd64", dropped)


# -- the batch format -----------------------------------------------------------------

def test_batch_round_trip() -> None:
    managed = RuntimeEvent(2, None, "managed", "adjust_managed_page_count", bytes=-(8 << 20),
                           caller="offline_pages")
    data = render_batch(header(dropped=3), [CRASH, managed])
    batch = parse_batch(data)
    assert batch.header == header(dropped=3)
    assert batch.events == (CRASH, managed)


_EV = b'{"seq": 3, "kind": "freed", "function": "f", '


@pytest.mark.parametrize(("old", "new", "extra", "message"), [
    (b"", b"", b"{not json", "line 3 is not JSON"),
    (b'"format_version": 1', b'"format_version": 9', b"", "line 1: format_version 9 is not 1"),
    (b'"bcc"', b'"perf"', b"", "line 1: source 'perf'"),
    (b"", b"", _EV + b'"bytes": -1}', "line 3: negative bytes for a freed event"),
    (b"", b"", _EV + b'"phys_start": 10, "phys_end": 5}',
     "line 3: phys_end 0x5 is below phys_start 0xa"),
    (b"", b"", _EV + b'"bytes": 18446744073709551616}',
     "line 3: bytes 18446744073709551616 does not fit in 64 bits"),
    (b"", b"", _EV + b'"colour": 1}', "line 3: unknown field 'colour'"),
    (b'00.000000Z"', b'00"', b"", "line 1: written_at '2026-11-22T10:00:00' has no time zone"),
])
def test_bad_batches_name_the_line(old: bytes, new: bytes, extra: bytes, message: str) -> None:
    data = render_batch(header(), [CRASH])
    if old:
        assert old in data
        data = data.replace(old, new, 1)
    if extra:
        data += extra + b"\n"
    with pytest.raises(BatchError) as exc:
        parse_batch(data)
    assert str(exc.value).startswith(message)


# -- /dev/kmsg records --------------------------------------------------------------

def test_kmsg_record_and_memory_lines() -> None:
    rec = parse_record(b"6,1234,812250000,-;Freeing reserve_mem:trace memory: 4096K\n"
                       b" SUBSYSTEM=x\n")
    assert rec is not None
    assert (rec.seq, rec.ts, rec.level, rec.facility) == (1234, 812.25, 6, 0)
    ev = memory_event(rec, rec.seq)
    assert ev is not None
    assert (ev.kind, ev.function, ev.bytes) == ("log", "Freeing reserve_mem:trace", 4096 * 1024)
    # The same text from user space (facility 1, LOG_USER) cannot pose as the kernel.
    user = parse_record(b"14,1235,812260000,-;Freeing reserve_mem:trace memory: 4096K\n")
    assert user is not None and memory_event(user, 1235) is None
    other = parse_record(b"6,1236,812270000,-;usb 1-1: new high-speed USB device\n")
    assert other is not None and memory_event(other, 1236) is None
    assert parse_record(b"garbage") is None


def test_seq_tracker_counts_gaps_and_ignores_rereads() -> None:
    t = SeqTracker()
    assert [t.see(s) for s in (10, 11, 15, 15, 12, 16, 20)] == [0, 0, 3, -1, -1, 0, 3]
    assert t.dropped == 6 and t.last == 20
    assert SeqTracker(last=99).see(99) == -1


def test_kmsg_follower_on_the_real_device(tmp_path: Path) -> None:
    """Reads this host's /dev/kmsg to its end, then sees a record written after that,
    with the next sequence number and nothing counted lost."""
    from memledger.tracer.live.kmsgfollow import KmsgFollower

    if not os.access("/dev/kmsg", os.R_OK | os.W_OK):
        pytest.fail("/dev/kmsg must be readable and writable (the tests run as root)")
    f = KmsgFollower("/dev/kmsg")
    try:
        before, _ = f.read(limit=10_000_000)
        last = f.last_seq()
        assert last is not None and before and before[-1].seq == last
        marker = f"memledger-test {uuid.uuid4()}"
        with open("/dev/kmsg", "w") as w:
            w.write(marker + "\n")
        got, lost = f.read()
        mine = [r for r in got if r.message == marker]
        assert len(mine) == 1 and lost == 0
        assert mine[0].facility == 1  # LOG_USER: user space cannot write kernel records
        assert got[0].seq == last + 1
    finally:
        f.close()


# -- probe hits to events -------------------------------------------------------------

TRACE_LINES = """\
              sh-812     [001] .....   901.125000: crash_free: (crash_free_reserved_phys_range+0x0/0x60) begin=0x70000000 end=0x77ffffff
              sh-812     [001] .....   901.125100: amc: (adjust_managed_page_count+0x0/0x70) count=1 caller=crash_free_reserved_phys_range+0x4a/0x60
              sh-812     [001] .....   901.125200: amc: (adjust_managed_page_count+0x0/0x70) count=1 caller=crash_free_reserved_phys_range+0x4a/0x60
         swapper-1     [000] .....     2.500000: fra: (free_reserved_area+0x0/0x170) start=0xffff8e8c3d7ab000 end=0xffff8e8c3d8a7000 s="initrd" base=0xffff8e8bc0000000
         swapper-1     [000] .....     2.510000: fra_ret: (do_populate_rootfs+0x18e/0x1e0 <- free_reserved_area) ret=252
           other-9     [000] .....     3.000000: sched_switch: prev=a next=b
"""


def test_assembler_turns_trace_lines_into_events() -> None:
    asm = Assembler()
    events = []
    for e in parse_trace(TRACE_LINES).events:
        hit = hit_from_trace(e)
        if hit is not None:
            events += asm.feed(hit)
    events += asm.flush_managed()
    crash, fra, managed = events
    # crash_shrink_memory frees [end of the new size, crashk_res.end] page by page:
    # 0x77ffffff is the inclusive end, so 0x8000 pages = 128 MiB.
    assert (crash.function, crash.phys_start, crash.phys_end, crash.bytes) == \
        ("crash_free_reserved_phys_range", 0x70000000, 0x78000000, 128 << 20)
    # 252 pages returned; the range is the direct-map one minus page_offset_base.
    assert (fra.bytes, fra.caller, fra.detail) == (252 * 4096, "do_populate_rootfs", "initrd")
    assert (fra.phys_start, fra.phys_end) == (0x7d7ab000, 0x7d8a7000)
    assert (managed.kind, managed.caller, managed.bytes) == \
        ("managed", "crash_free_reserved_phys_range", 2 * 4096)
    assert [e.seq for e in events] == [1, 2, 3]


def test_failed_hotplug_and_unpaired_returns_are_not_events() -> None:
    from memledger.tracer.probes import ProbeHit

    asm = Assembler()
    assert asm.feed(ProbeHit("online", 7, 1.0, {"pfn": 0x80000, "nr_pages": 32768})) == []
    assert asm.feed(ProbeHit("online_ret", 7, 1.1, {"ret": -16})) == []     # -EBUSY
    assert asm.feed(ProbeHit("offline_ret", 7, 1.2, {"ret": 0})) == []      # no entry
    assert asm.unpaired == 1
    assert asm.feed(ProbeHit("offline", 8, 2.0, {"pfn": 0x80000, "nr_pages": 32768})) == []
    (ev,) = asm.feed(ProbeHit("offline_ret", 8, 2.1, {"ret": 0}))
    assert (ev.kind, ev.bytes, ev.phys_start) == ("offlined", 128 << 20, 0x80000000)


def test_probe_ladder_uses_crash_shrink_only_without_the_range_function() -> None:
    everything = {p.function for p in PROBES}
    chosen, missing = choose_probes(everything)
    assert "crash_shrink_memory" not in {p.function for p in chosen} and missing == []
    chosen, missing = choose_probes(everything - {"crash_free_reserved_phys_range"})
    assert {"crash_shrink", "crash_shrink_ret"} <= {p.event for p in chosen}
    assert missing == []
    _, missing = choose_probes(everything - {"online_pages"})
    assert missing == ["online_pages"]
    assert PROBES[0].definition == ("p:memledger/fra free_reserved_area start=%di:x64 "
                                    "end=%si:x64 s=+0(%cx):string base=@page_offset_base:x64")


def test_kfunc_programs_are_written_only_for_the_chosen_probes() -> None:
    # bcc attaches every kfunc__/kretfunc__ program it loads, so a program for a function
    # the kernel lacks would fail the whole load.
    everything = {p.function for p in PROBES}
    chosen, _ = choose_probes(everything - {"crash_free_reserved_phys_range", "online_pages"})
    text = kfunc_text(chosen)
    programs = re.findall(r"^(KFUNC_PROBE|KRETFUNC_PROBE)\((\w+),", text, re.M)
    assert sorted(programs) == sorted(
        ("KRETFUNC_PROBE" if p.is_return else "KFUNC_PROBE", p.function) for p in chosen)
    assert "crash_free_reserved_phys_range" not in text and "online_pages" not in text
    for p in chosen:
        assert p.event == "amc" or f"ID_{p.event})" in text  # each program tags its records with its own probe


def test_the_caller_is_the_frame_below_the_traced_function() -> None:
    # A fentry program's kernel stack, innermost first: the program, its trampoline (no
    # symbol), the traced function at its patched first instruction, then its caller.
    frames = ["bpf_prog_6deef7357e7b4530_kfunc__adjust_managed_page_count", "[unknown]",
              "adjust_managed_page_count", "crash_shrink_memory", "kexec_crash_size_store",
              "kernfs_fop_write_iter"]
    assert caller_in(frames, "adjust_managed_page_count") == "crash_shrink_memory"
    assert caller_in(frames, "crash_shrink_memory") == "kexec_crash_size_store"
    assert caller_in(frames, "free_reserved_area") is None
    assert caller_in(["x", "kernfs_fop_write_iter"], "kernfs_fop_write_iter") is None


# -- the store and the daemon ---------------------------------------------------------

@pytest.mark.slow
def test_batches_are_stored_once_and_summed_per_boot(db_url: str) -> None:
    engine = make_engine(resolve_url(db_url))
    upgrade(engine)
    try:
        data = render_batch(header(), [CRASH])
        assert ingest_batch(engine, data).status == "new"
        assert ingest_batch(engine, data).status == "duplicate"
        kmsg = RuntimeEvent(5, 900.0, "log", "Freeing reserve_mem:trace", bytes=4 << 20,
                            detail="kmsg seq 5: Freeing reserve_mem:trace memory: 4096K")
        ingest_batch(engine, render_batch(header(source="kmsg", dropped=7), [kmsg]))
        ingest_batch(engine, render_batch(header(boot=2), [CRASH]))  # another boot
        with engine.connect() as conn:
            t = runtime_totals(conn, machine_id(1), boot_id(1, 1))
        assert t.freed == {"crash_free_reserved_phys_range": 128 << 20}
        assert t.logged == {"Freeing reserve_mem:trace": 4 << 20}
        assert t.events == {"bcc": 1, "kmsg": 1} and t.dropped == {"bcc": 0, "kmsg": 7}
    finally:
        engine.dispose()


@pytest.mark.slow
def test_daemon_stores_batches_and_exports_them(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    drop(spool, "boot.tar.gz", make_capture("6.12.117+deb12-amd64-memblock", 1, 1))
    d = Daemon(tmp_path, str(tmp_path / "db.sqlite"), spool)
    try:
        wait_for("the boot", lambda: d.metric("memledger_store_boots") == 1)
        assert "memledger_runtime_freed_bytes_total" not in d.get("/metrics")[2]  # unknown
        managed = RuntimeEvent(2, None, "managed", "adjust_managed_page_count",
                               bytes=128 << 20, caller="crash_free_reserved_phys_range")
        drop(spool, "a.jsonl", render_batch(header(), [CRASH, managed]))
        drop(spool, "b.jsonl", render_batch(header(), [CRASH])[:-40])  # cut short
        wait_for("the batch", lambda: (spool / "done" / "a.jsonl").exists())
        wait_for("the refusal", lambda: (spool / "failed" / "b.jsonl.error").exists())
        assert (spool / "failed" / "b.jsonl.error").read_text().startswith("line 2 is not JSON")
        fn = 'memledger_runtime_freed_bytes_total{function="crash_free_reserved_phys_range"}'
        assert d.metric(fn) == 128 << 20
        assert d.metric('memledger_runtime_freed_bytes_total{function="online_pages"}') == 0
        assert d.metric('memledger_runtime_managed_change_bytes{caller='
                        '"crash_free_reserved_phys_range"}') == 128 << 20
        assert d.metric('memledger_runtime_events_total{source="bcc"}') == 2
    finally:
        d.stop()


# -- memledger collect ---------------------------------------------------------------

@pytest.mark.slow
def test_collect_captures_the_boot_and_resumes_the_kernel_log(tmp_path: Path) -> None:
    spool, state = tmp_path / "spool", tmp_path / "state"
    cmd = [MEMLEDGER, "collect", "--backend", "none", "--duration", "1s", "--flush-interval",
           "500ms", "--spool", str(spool), "--state-dir", str(state)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    machine = Path("/etc/machine-id").read_text().strip()
    assert (spool / f"{machine}-{boot}.tar.gz").stat().st_size > 1000
    saved = json.loads((state / "kmsg.json").read_text())
    assert saved["boot_id"] == boot
    with open("/dev/kmsg", "w") as w:
        w.write(f"memledger-test resume {uuid.uuid4()}\n")
    second = subprocess.run([*cmd, "--no-capture"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert second.returncode == 0, second.stderr
    assert f"resuming after seq {saved['seq']}" in second.stderr
    assert json.loads((state / "kmsg.json").read_text())["seq"] > saved["seq"]


def test_collect_refuses_a_missing_backend(tmp_path: Path) -> None:
    """This host has no python3-bpfcc in the test venv's reach and no kprobe_events: the
    named back end fails with one line, exit 1, and no traceback."""
    r = subprocess.run([MEMLEDGER, "collect", "--backend", "tracefs", "--no-kmsg", "--no-capture",
                        "--tracefs", str(tmp_path), "--spool", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert "no runtime back end works: tracefs:" in r.stderr and "Traceback" not in r.stderr
