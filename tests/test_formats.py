"""Kernel log formats the real captures do not cover (dmesg flags, syslog, journalctl, …).

Log forms are built from the real capture g by re-wrapping each of its messages, so the
messages (and the kernel's figures in them) stay the kernel's own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CAPTURES, analyze_json, kernel_efi_freed_bytes
from memledger.tracer import e820, efimap, memblock
from memledger.tracer.bootlog import parse_boot
from memledger.tracer.logformat import split_boots

G_TEXT = (CAPTURES / "g-6.12.117-default" / "root" / "dmesg.txt").read_text()
G_LINES = [re.match(r"^\[\s*(\d+)\.(\d+)\] ?(.*)$", ln).groups() for ln in G_TEXT.splitlines()]  # type: ignore[union-attr]
G_FREED = kernel_efi_freed_bytes(G_TEXT)


def _as_kmsg() -> str:
    out = []
    for seq, (s, us, msg) in enumerate(G_LINES):
        out.append(f"6,{seq},{int(s) * 1000000 + int(us)},-;{msg}")
        if seq == 3:
            out.append(" SUBSYSTEM=acpi")  # dictionary continuation lines are skipped
    return "\n".join(out) + "\n"


def _each(line: str) -> Callable[[], str]:
    """g's messages, each written as ``line`` says: {ts} its time stamp as dmesg prints
    it, {m} the message, {d} a digit that varies, {task} and {cpu} caller ids."""
    return lambda: "\n".join(
        line.format(ts=f"{int(s):5d}.{us}", m=m, d=i % 10, task=f"T{i % 3}", cpu=f"C{i % 2}")
        for i, (s, us, m) in enumerate(G_LINES))


FORMS = {
    "dmesg": lambda: G_TEXT,
    "plain": lambda: "\n".join(m for _, _, m in G_LINES),
    "kmsg": _as_kmsg,
    "dmesg-raw": _each("<6>[{ts}] {m}"),
    "dmesg-decode": _each("kern  :info  : [{ts}] {m}"),
    "journal": _each("[{ts}] host1 kernel: {m}"),
    "journal-no-host": _each("[{ts}] kernel: {m}"),
    "syslog": _each("Nov 22 02:18:4{d} host1 kernel: {m}"),
    "syslog-kernel-time": _each("Nov  2 02:18:4{d} host1 kernel: [{ts}] {m}"),
    "syslog-no-host": _each("Jan  1 00:00:03 kernel: [{ts}] {m}"),
    "syslog-iso": _each("2025-10-14T11:24:04.0347{d}+08:00 nas kernel: [{ts}] {m}"),
    "syslog-iso-level": _each("2026-05-21T20:53:19.05753{d}Z INFO kernel: {m}"),
    "syslog-full": _each("Wed 2023-10-18 21:26:3{d} CEST host1 kernel: {m}"),
    "syslog-installer": _each("03:09:07,53{d} NOTICE kernel:{m}"),
    "dmesg-raw-samsung": _each("<6>[{ts}] c{d} {d:>6} {m}"),
    "dmesg-ctime": _each("[Sun Jun 18 21:31:0{d} 2023] {m}"),
    "dmesg-iso": _each("2023-06-18T21:31:0{d},12345{d}+02:00 {m}"),
    "dmesg-caller": _each("[{ts}] [{task:>7}] {m}"),
    "dmesg-caller-console": _each("[{ts}][{cpu:>6}] {m}"),
    "dmesg-caller-mediatek": _each("[{ts}]  [0:  kworker/u16:{d}:   64] {m}"),
    "crlf": lambda: G_TEXT.replace("\n", "\r\n"),
}


# The format each variant above is read as, where its name says more.
FORMAT_OF = {"crlf": "dmesg", "journal-no-host": "journal", "syslog-kernel-time": "syslog",
             "syslog-no-host": "syslog", "syslog-installer": "syslog",
             "dmesg-raw-samsung": "dmesg-raw", "syslog-iso-level": "syslog-iso",
             "syslog-full": "syslog-iso", "dmesg-caller-console": "dmesg-caller",
             "dmesg-caller-mediatek": "dmesg-caller"}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_log_form_gives_the_kernels_figures(form: str) -> None:
    boots = split_boots(FORMS[form]())
    assert len(boots) == 1
    log = parse_boot(boots[0])
    assert log.complete and log.release == "6.12.117+deb12-amd64"
    assert sum(f.kib for f in log.freeing if f.name == "EFI boot services") * 1024 == G_FREED
    assert len(log.e820) == 16
    assert boots[0].format == FORMAT_OF.get(form, form)


def test_journal_boot_separators_split_boots() -> None:
    body = "\n".join(f"[{int(s):5d}.{us}] h kernel: {m}" for s, us, m in G_LINES)
    text = ("-- Boot 0123456789abcdef0123456789abcdef --\n" + body
            + "\n-- Boot fedcba9876543210fedcba9876543210 --\n" + body.replace("46912K", "46908K"))
    boots = split_boots(text)
    assert [b.boot_id for b in boots] == ["0123456789abcdef0123456789abcdef",
                                         "fedcba9876543210fedcba9876543210"]
    freed = [parse_boot(b).freeing for b in boots]
    assert [[f.kib for f in fl if f.name == "EFI boot services"] for fl in freed] == [[46912], [46908]]


def test_wrapped_ring_buffer_is_incomplete() -> None:
    boots = split_boots("\n".join(G_TEXT.splitlines()[200:]))
    assert len(boots) == 1 and not boots[0].complete


def test_time_going_back_starts_a_new_boot_without_a_banner() -> None:
    lines = G_TEXT.splitlines()[300:]
    later = [re.sub(r"^\[\s*(\d+\.\d+)\]", lambda m: f"[{float(m.group(1)) + 0.0005:12.6f}]", ln)
             for ln in lines]
    boots = split_boots("\n".join(lines + later))
    assert len(boots) == 2
    assert not boots[0].complete and not boots[1].complete



def test_kmsg_sequence_reset_or_time_drop_starts_a_new_boot() -> None:
    records = _as_kmsg().splitlines()
    again = _as_kmsg().splitlines()[300:]                  # a wrapped second boot: seq 300+
    later = [re.sub(r"^(\d+),(\d+),", lambda m: f"{m[1]},{int(m[2]) + 5000},", r) for r in again]
    # seq goes back (the one continuation line, " SUBSYSTEM=acpi", is in the first 300)
    assert [len(b.msgs) for b in split_boots("\n".join(records + again))] == [len(G_LINES),
                                                                             len(again)]
    boots = split_boots("\n".join(records + later))       # seq goes on, time goes back
    assert [b.complete for b in boots] == [True, False]
    assert boots[1].linenos[0] == len(records) + 1


def test_a_node_whose_clock_runs_ahead_is_not_a_new_boot() -> None:
    # A NUMA server: the first CPU of node 1 prints a time seconds ahead ("[    1.270005]
    # .... node  #1, CPUs:        #8" then "[    0.214304] …"), and the boot goes on from
    # the earlier time.
    lines = G_TEXT.splitlines()
    at = next(i for i, ln in enumerate(lines) if ".... node  #0, CPUs:" in ln)
    t0 = float(lines[at + 1][1:13])
    lines.insert(at + 1, f"[{t0 + 5.0:12.6f}] .... node  #1, CPUs:    #8  #9 #10 #11")
    boots = split_boots("\n".join(lines))
    assert len(boots) == 1 and boots[0].complete
    assert sum(f.kib for f in parse_boot(boots[0]).freeing
               if f.name == "EFI boot services") * 1024 == G_FREED


def test_lines_before_the_banner_at_time_zero_belong_to_its_boot() -> None:
    # 3.x prints cgroup lines before the banner; arm64 "Booting Linux on physical CPU".
    first = ["[    0.000000] Initializing cgroup subsys cpuset",
             "[    0.000000] Initializing cgroup subsys cpu"]
    # The second boot's times differ a little, as a real second boot's do (identical
    # copies would be a console's replay of the ring buffer).
    later = [re.sub(r"^\[\s*(\d+\.\d+)\]", lambda m: f"[{float(m.group(1)) * 1.01:12.6f}]", ln)
             for ln in G_TEXT.splitlines()]
    text = "\n".join([*first, *G_TEXT.splitlines(), *first, *later])
    boots = split_boots(text)
    assert [len(b.msgs) for b in boots] == [len(G_LINES) + 2] * 2
    assert [b.msgs[0] for b in boots] == ["Initializing cgroup subsys cpuset"] * 2
    assert all(b.complete and b.banner == 2 for b in boots)
    assert boots[1].linenos[0] == len(G_LINES) + 3


def test_syslog_lines_keep_the_kernels_time_stamp_and_skip_other_programs() -> None:
    text = "\n".join(
        f"Oct 18 21:26:33 host kernel: [{int(s):5d}.{us}] {m}\n"
        f"Oct 18 21:26:33 host systemd[1]: Started Something {i}."
        for i, (s, us, m) in enumerate(G_LINES))
    (boot,) = split_boots(text)
    assert boot.format == "syslog" and boot.complete and boot.noise_lines == len(G_LINES)
    assert boot.ts == [float(f"{s}.{us}") for s, us, _ in G_LINES]
    assert boot.linenos[:2] == [1, 3]


def test_a_syslog_line_torn_at_a_crash_still_starts_the_next_boot() -> None:
    # The first boot's syslog ends mid-line; the next boot's banner follows on that line.
    boot = [f"2025-03-26T14:43:09.40{i % 10}+00:00 erwin kernel: {m}" for i, (_, _, m) in enumerate(G_LINES)]
    torn = "2025-03-26T14:44:44" + boot[0]
    boots = split_boots("\n".join([*boot, torn, *boot[1:]]))
    assert [(len(b.msgs), b.complete) for b in boots] == [(len(G_LINES), True)] * 2


def test_a_syslog_whose_kernel_lines_come_late_is_still_a_syslog() -> None:
    # Thousands of other programs' lines before the kernel's first.
    others = [f"May 26 06:26:01 host CRON[{i}]: (root) CMD (true)" for i in range(5000)]
    kernel = [f"May 26 19:43:59 host kernel: {m}" for _, _, m in G_LINES]
    (boot,) = split_boots("\n".join([*others, *kernel]))
    assert boot.format == "syslog" and boot.complete and boot.linenos[0] == 5001


def test_a_console_line_with_a_priority_prefix_is_kept() -> None:
    lines = G_TEXT.splitlines()
    at = next(i for i, ln in enumerate(lines) if "Freeing EFI boot services memory" in ln)
    lines[at] = "<20>" + lines[at]
    (boot,) = split_boots("\n".join(lines))
    assert sum(f.kib for f in parse_boot(boot).freeing
               if f.name == "EFI boot services") * 1024 == G_FREED


# Verbatim from boots under TCG (tests/fixtures/boots): the secondary CPU prints before
# its clock is set, one line on 6.12.117, two on 6.1.0-47.
UNSYNCHRONISED_CPU = {
    "6.12": ["[    1.010519] .... node  #0, CPUs:      #1",
             "[    0.000000] calibrate_delay_direct() dropping max bogoMips estimate 3 = 13028912",
             "[    1.126431] smp: Brought up 1 node, 2 CPUs"],
    "6.1": ["[    2.200512] .... node  #0, CPUs:      #1",
            "[    0.371649] calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.",
            '[    0.371649] Probably due to long platform interrupts. Consider using "lpj=" boot option.',
            "[    2.392822] smp: Brought up 1 node, 2 CPUs"],
}


@pytest.mark.parametrize("series", sorted(UNSYNCHRONISED_CPU))
def test_lines_from_an_unsynchronised_cpu_are_not_a_new_boot(series: str) -> None:
    lines = ["[    0.000000] Linux version 6.x (debian-kernel@lists.debian.org)", *UNSYNCHRONISED_CPU[series]]
    boots = split_boots("\n".join(lines))
    assert len(boots) == 1
    assert len(boots[0].lines) == len(lines)


# --- E820 -----------------------------------------------------------------------------

def test_e820_v7_format() -> None:
    # v7.0+ (5668a64622cf): leading-space type names, a double space, and gap rows.
    ram = e820.parse_entry("BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff]  System RAM")
    res = e820.parse_entry("BIOS-e820: [mem 0x00000000000a0000-0x00000000000fffff]  device reserved")
    assert ram is not None and (ram.start, ram.end, ram.type) == (0, 0xA0000, "ram")
    assert res is not None and res.type == "reserved"
    assert e820.parse_entry("BIOS-e820: [gap 0x00000000d0000000-0x00000000efffffff]") is None
    ch = e820.parse_change("e820: update [mem 0x00000000-0x00000fff] System RAM ==> device reserved")
    assert ch is not None and (ch.start, ch.end, ch.old, ch.new) == (0, 0x1000, "ram", "reserved")


def test_e820_v61_format() -> None:
    ch = e820.parse_change("e820: remove [mem 0x000a0000-0x000fffff] usable")
    assert ch is not None and (ch.op, ch.start, ch.end, ch.old, ch.new) == ("remove", 0xA0000, 0x100000, "ram", None)


# --- EFI memory map -------------------------------------------------------------------

def test_efi_memmap_14_columns_v61_upstream() -> None:
    d = efimap.parse_memmap_line(
        "efi: mem08: [Boot Data   |   |  |  |  |  |  |  |  |   |WB|WT|WC|UC] "
        "range=[0x0000000000900000-0x00000000014fffff] (12MB)")
    assert d is not None and d.type == 4 and d.boot_services and not d.runtime
    assert (d.start, d.end) == (0x900000, 0x1500000)
    assert {"WB", "WT", "WC", "UC"} <= d.attrs


def test_efi_memmap_long_names_and_unknown_attribute() -> None:
    d = efimap.parse_memmap_line(
        "efi: mem36: [Runtime Data       |RUN|  |  |  |  |  |  |  |   |WB|WT|WC|UC] "
        "range=[0x00000000bfef4000-0x00000000bff77fff] (0MB)")
    assert d is not None and d.type == 6 and d.runtime
    c = efimap.parse_memmap_line(
        "efi: mem01: [Conventional Memory|attr=0x0000000000100000] range=[0x0-0xfff] (0MB)")
    assert c is not None and c.type == 7 and c.attrs == {"attr=0x0000000000100000"}


# --- memblock -------------------------------------------------------------------------

def test_memblock_v616_reserve_with_nid_and_flags() -> None:
    ev = memblock.parse_line("__memblock_reserve: [0x0000000000087000-0x0000000000087fff] nid=-1 flags=20 "
                             "efi_reserve_boot_services+0xaa/0xf0")
    assert isinstance(ev, memblock.MemblockEvent)
    assert (ev.op, ev.start, ev.end, ev.nid, ev.flags) == ("reserve", 0x87000, 0x88000, -1, 0x20)
    assert ev.caller_fn == "efi_reserve_boot_services"


def test_memblock_v510_free_late_name() -> None:
    ev = memblock.parse_line("__memblock_free_late: [0x0000000000063000-0x000000000008efff] "
                             "efi_free_boot_services+0x14b/0x23b")
    assert isinstance(ev, memblock.MemblockEvent) and ev.op == "free_late"


def test_memblock_debugfs_both_formats() -> None:
    old = memblock.parse_debugfs("   0: 0x0000000080000000..0x00000000901fffff\n")
    new = memblock.parse_debugfs("   3: 0x0000000000100000..0x000000003fffffff    0 NONE\n"
                                 "   4: 0x0000000040000000..0x0000000040000fff    x RSV_KERN\n")
    assert (old[0].start, old[0].end, old[0].flag) == (0x80000000, 0x90200000, None)
    assert [(r.nid, r.flag) for r in new] == [(0, "NONE"), (None, "RSV_KERN")]


# --- Memory: and crashkernel lines ----------------------------------------------------

def _one(msg: str) -> object:
    return parse_boot(split_boots(f"[    0.000000] {msg}\n")[0])


def test_memory_line_v5_suffix_and_highmem() -> None:
    log = _one("Memory: 3979172K/4193784K available (14339K kernel code, 2392K rwdata, 5068K rodata, "
               "2652K init, 5220K bss, 214356K reserved, 0K cma-reserved, 0K highmem)")
    assert log.memory is not None and log.memory.reserved_kib == 214356  # type: ignore[attr-defined]


def test_crashkernel_lines() -> None:
    gen = _one("crashkernel low memory reserved: 0x6b000000 - 0x7b000000 (256 MB)")
    old = _one("Reserving 256MB of low memory at 2800MB for crashkernel (low RAM limit: 4096MB)")
    assert [(c.low, c.start, c.size) for c in gen.crashkernel] == [(True, 0x6B000000, 256 << 20)]  # type: ignore[attr-defined]
    assert [(c.low, c.size) for c in old.crashkernel] == [(True, 256 << 20)]  # type: ignore[attr-defined]


# --- A log whose format changes part-way (issue 28 item 8) -----------------------------
#
# Two real boots of the lab (tests/fixtures/boots), each written in a form of its own, in
# one file. The oracle is what each kernel printed in its own dmesg: the release, the
# "Memory: …K/…K available (… reserved)" figures and every "Freeing … memory: NK" line.

_BOOTS = Path(__file__).parent / "fixtures" / "boots"
_A = (_BOOTS / "6.1.0-56-amd64-default" / "root" / "dmesg.txt").read_text()
_B = (_BOOTS / "6.12.117+deb12-cloud-amd64-default" / "root" / "dmesg.txt").read_text()


def _oracle(dmesg: str) -> tuple[str, tuple[int, int, int], list[tuple[str, int]]]:
    """The release, Memory:'s available, total and reserved KiB, and each Freeing line's
    name and KiB, read from the kernel's lines with expressions of this test's own."""
    release = re.search(r"\] Linux version (\S+)", dmesg)
    memory = re.search(r"\] Memory: (\d+)K/(\d+)K available \(.*?(\d+)K reserved", dmesg)
    assert release is not None and memory is not None
    freeing = [(m[1], int(m[2])) for m in re.finditer(r"\] (?:efi: )?Freeing (.+?) memory: (\d+)K$",
                                                      dmesg, re.M)]
    assert len(freeing) >= 5
    return release[1], (int(memory[1]), int(memory[2]), int(memory[3])), freeing


def _records(dmesg: str) -> list[tuple[str, str]]:
    """Each kernel line's time stamp as dmesg prints it, and its message."""
    return [(m[1], m[2]) for m in re.finditer(r"^\[\s*(\d+\.\d+)\] ?(.*)$", dmesg, re.M)]


def _written(form: str) -> Callable[[str], str]:
    """A real boot's dmesg rewritten in ``form``, its messages the kernel's own."""
    def write(dmesg: str) -> str:
        recs = _records(dmesg)
        if form == "dmesg":
            return dmesg
        lines = {
            "plain": [m for _, m in recs],
            "syslog": [f"Sep 23 05:36:{i % 60:02d} host kernel: {m}" for i, (_, m) in enumerate(recs)],
            "short-precise": [f"Sep 23 05:36:55.{i:06d} host kernel: {m}" for i, (_, m) in enumerate(recs)],
            "syslog-iso": [f"2019-09-23T05:36:55.{i:06d}+02:00 host kernel: {m}"
                           for i, (_, m) in enumerate(recs)],
            "journal": [f"[{t:>12}] host kernel: {m}" for t, m in recs],
            "kmsg": [f"6,{i},{round(float(t) * 1e6)},-;{m}" for i, (t, m) in enumerate(recs)],
            "dmesg-caller": [f"[{t:>12}] [{'T' + str(i % 7):>7}] {m}" for i, (t, m) in enumerate(recs)],
            "dmesg-decode": [f"kern  :info  : [{t:>12}] {m}" for t, m in recs],
            # A kern.log among other programs' lines.
            "syslog-busy": [ln for i, (_, m) in enumerate(recs) for ln in (
                f"Sep 23 05:37:{i % 60:02d} host kernel: {m}",
                f"Sep 23 05:37:{i % 60:02d} host systemd[1]: Started Session {i} of user root.")],
        }[form]
        return "\n".join(lines) + "\n"
    return write


# The format split_boots names each part by.
_NAMED = {"short-precise": "syslog", "syslog-busy": "syslog"}

# first boot's form, the line between, second boot's form
CHANGES = [
    ("syslog", "REBOOTED HERE", "dmesg"),            # the report
    ("dmesg", "REBOOTED HERE", "syslog"),
    ("short-precise", "", "plain"),                  # journalctl -o short-precise, then dmesg -t
    ("plain", "-- cut here --", "dmesg"),
    ("journal", "", "dmesg"),
    ("dmesg", "", "journal"),
    ("syslog", "", "syslog-iso"),                    # rsyslog's time format changed by an upgrade
    ("kmsg", "", "dmesg-caller"),
    ("dmesg", "== dmesg of the next boot ==", "kmsg"),
    ("syslog-busy", "", "plain"),
    ("dmesg-caller", "", "syslog-busy"),
    ("dmesg-caller", "", "journal"),
    ("dmesg", "REBOOTED HERE", "plain"),
    ("plain", "", "dmesg-decode"),
]


@pytest.mark.parametrize(("first", "between", "second"), CHANGES, ids=lambda v: v or "-")
def test_a_change_of_format_between_boots_keeps_both_boots_figures(
        first: str, between: str, second: str) -> None:
    head, tail = _written(first)(_A), _written(second)(_B).split("\n")
    boots = split_boots(head + between + "\n" + "\n".join(tail))
    assert [b.format for b in boots] == [_NAMED.get(f, f) for f in (first, second)]
    # The second boot's banner is read on its own line, after the line between.
    banner = head.count("\n") + 2 + next(i for i, ln in enumerate(tail) if "Linux version" in ln)
    assert boots[1].banner is not None and boots[1].linenos[boots[1].banner] == banner
    for boot, dmesg in zip(boots, (_A, _B), strict=True):
        release, memory, freeing = _oracle(dmesg)
        log = parse_boot(boot)
        assert log.release == release and log.complete and log.init_done is not None
        assert log.memory is not None
        assert (log.memory.available_kib, log.memory.total_kib, log.memory.reserved_kib) == memory
        assert [(f.name, f.kib) for f in log.freeing] == freeing


# A change inside one boot: the first part up to a line, the rest in another form.
INSIDE = [
    ("syslog", "dmesg", "Memory: "),                  # the change just before Memory:
    ("dmesg", "journal", "Freeing SMP alternatives"),
    ("plain", "dmesg", "efi: Freeing EFI boot services"),
    ("dmesg", "syslog-iso", "Freeing initrd memory"),
]


@pytest.mark.parametrize(("first", "second", "at"), INSIDE, ids=lambda v: v.strip())
def test_a_change_of_format_inside_a_boot_keeps_its_figures(first: str, second: str, at: str) -> None:
    lines = _A.splitlines(keepends=True)
    cut = next(i for i, ln in enumerate(lines) if at in ln)
    text = _written(first)("".join(lines[:cut])) + _written(second)("".join(lines[cut:]))
    (boot,) = split_boots(text)
    assert len(boot.msgs) == len(_records(_A))
    release, memory, freeing = _oracle(_A)
    log = parse_boot(boot)
    assert log.release == release and log.complete and log.init_done is not None
    assert log.memory is not None
    assert (log.memory.available_kib, log.memory.total_kib, log.memory.reserved_kib) == memory
    assert [(f.name, f.kib) for f in log.freeing] == freeing


def test_the_reported_log_is_two_whole_boots(tmp_path: Path) -> None:
    # A syslog, "REBOOTED HERE", then the next boot's plain dmesg: `memledger analyze`
    # gives the second boot its Memory: and Freeing figures and does not call it truncated.
    path = tmp_path / "attachment.txt"
    path.write_text(_written("syslog")(_A) + "REBOOTED HERE\n" + _B)
    doc = analyze_json(path)
    ledgers = doc if isinstance(doc, list) else [doc]
    assert [led["fidelity"]["log_format"] for led in ledgers] == ["syslog", "dmesg"]
    for led, dmesg in zip(ledgers, (_A, _B), strict=True):
        release, memory, freeing = _oracle(dmesg)
        assert led["kernel"]["release"] == release
        assert led["kernel_accounting"]["boot_reserved_bytes"] == memory[2] * 1024
        by_name: dict[str, int] = {}
        for name, kib in freeing:
            by_name[name] = by_name.get(name, 0) + kib * 1024
        assert led["kernel_accounting"]["freed_by_name"] == by_name
        assert "log_truncated" not in {a["code"] for a in led["anomalies"]}


def test_stray_lines_of_another_format_are_not_a_change() -> None:
    # One pasted line of another format, and /proc/version's text in a bundle (a banner
    # line followed by other text), change nothing: the boot and its figures stay whole.
    lines = _written("syslog")(_A).splitlines()
    at = next(i for i, ln in enumerate(lines) if "Memory: " in ln)
    lines.insert(at, "[    0.100000] a line pasted from a dmesg")
    bundle = "\n".join(["==== kernel version ====", "", _records(_B)[0][1], "", "==== meminfo ====",
                        "MemTotal:        1018116 kB", "MemFree:          596196 kB",
                        "Buffers:           28040 kB", "Cached:           209268 kB", ""])
    boots = split_boots("\n".join(lines) + "\n" + bundle + _B)
    assert [b.format for b in boots] == ["syslog", "dmesg"]
    assert len(boots[0].msgs) == len(_records(_A))
    for boot, dmesg in zip(boots, (_A, _B), strict=True):
        log = parse_boot(boot)
        release, memory, freeing = _oracle(dmesg)
        assert log.release == release and log.memory is not None
        assert log.memory.reserved_kib == memory[2]
        assert [(f.name, f.kib) for f in log.freeing] == freeing
