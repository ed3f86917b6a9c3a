"""Fuzz targets: every entry point where memledger parses what somebody else wrote.

Each target takes the fuzzer's bytes and may end in only one way besides returning: the
documented error of its entry point (the one-line user error the CLI and the daemon turn
into exit 2 or failed/). Anything else is a crash: a bug. tests/fuzz/fuzzrun.py runs them
under atheris; tests/reliability/test_fuzz_regressions.py replays the seeds and every
crasher kept in tests/fuzz/crashers/TARGET/.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from memledger.ledger.boot_services import trace_efi_free
from memledger.ledger.compute import compute_ledger
from memledger.store.ingest import BadCapture, prepare
from memledger.tracer import bootparams, bootsetup, e820, efimap, ftrace, kmsg, memblock, procfs
from memledger.tracer.capture import CaptureError, Manifest, unpack
from memledger.tracer.evidence import NotAKernelLog, build_evidence, is_trace_text
from memledger.tracer.kprobes import reserved_area_frees
from memledger.tracer.probes import hit_from_trace
from memledger.tracer.reader import MemTree, Snapshot, read_tree
from memledger.tracer.runtime import BatchError, BatchHeader, RuntimeEvent, parse_batch, render_batch

__all__ = ("SEEDS", "TARGETS")

FIXTURES = Path(__file__).parents[1] / "fixtures"
BOOT = FIXTURES / "boots" / "6.12.117+deb12-amd64-memblock" / "root"
TRACE_BOOT = FIXTURES / "boots" / "6.1.0-47-amd64-trace" / "root"


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")  # as cli/inputs.py reads a file


def _ledgers(snap: Snapshot, host_data: bool) -> None:
    for ev in build_evidence(snap, host_data=host_data):
        json.dumps(compute_ledger(ev).as_dict())


def kernel_log(data: bytes) -> None:
    """A log or trace file given to ``memledger analyze`` (cli/inputs.py)."""
    text = _text(data)
    snap = Snapshot(root="fuzz")
    if is_trace_text(text):
        snap.traces["fuzz"] = text
    else:
        snap.kernel_log = text
    with contextlib.suppress(NotAKernelLog):
        _ledgers(snap, host_data=False)


def _prepare(data: bytes) -> None:
    with contextlib.suppress(BadCapture):
        prepare(data, "fuzz")


def capture_gzip(data: bytes) -> None:
    """A spool file as the daemon reads it (store/ingest.py prepare)."""
    _prepare(data)


def capture_tar(data: bytes) -> None:
    """The same, past the gzip checksum: the fuzzer mutates the tar inside."""
    _prepare(gzip.compress(data, compresslevel=1, mtime=0))


def _recorded_root() -> dict[str, bytes]:
    return {str(p.relative_to(BOOT)): p.read_bytes() for p in sorted(BOOT.rglob("*")) if p.is_file()}


_ROOT = _recorded_root()
_ROOT_PATHS = [*sorted(_ROOT), "sys/kernel/debug/memblock/reserved", "sys/kernel/debug/memblock/memory", "sys/kernel/boot_params/data", "sys/firmware/efi/runtime-map/0/type", "sys/firmware/efi/runtime-map/0/phys_addr", "sys/firmware/efi/runtime-map/0/num_pages", "sys/firmware/efi/runtime-map/0/attribute"]


def root_files(data: bytes) -> None:
    """A real boot's root tree (/proc, /sys, dmesg) with files replaced by the fuzzer's
    bytes: every /proc and /sys parser through read_tree."""
    files = dict(_ROOT)
    pos = 0
    while pos + 3 <= len(data):
        which, size = data[pos], int.from_bytes(data[pos + 1:pos + 3], "little")
        files[_ROOT_PATHS[which % len(_ROOT_PATHS)]] = data[pos + 3:pos + 3 + size]
        pos += 3 + size
    with contextlib.suppress(NotAKernelLog):
        _ledgers(read_tree(MemTree(files), "fuzz"), host_data=True)


def trace(data: bytes) -> None:
    """An ftrace text buffer (boot-time trace or the tracefs collector's pipe)."""
    log = ftrace.parse_trace(_text(data))
    reserved_area_frees(log)
    trace_efi_free(log)
    for e in log.events:
        hit_from_trace(e)


def runtime_batch(data: bytes) -> None:
    """A runtime event batch dropped into the spool by ``memledger collect``."""
    with contextlib.suppress(BatchError):
        parse_batch(data)


def kmsg_record(data: bytes) -> None:
    """One /dev/kmsg record as read(2) returns it (the collector's kmsg follower)."""
    rec = kmsg.parse_record(data)
    if rec is not None:
        kmsg.memory_event(rec, 1)


def log_lines(data: bytes) -> None:
    """The single-line parsers: EFI memmap, E820, memblock (ValueError is their error)."""
    lines = _text(data).splitlines()
    for parse in (efimap.parse_memmap_line, e820.parse_entry, e820.parse_change, memblock.parse_line):
        for line in lines:
            with contextlib.suppress(ValueError):
                parse(line)
    memblock.parse_ranges(lines)


def proc_files(data: bytes) -> None:
    """/proc/meminfo, zoneinfo, iomem, memblock debugfs and boot_params parsers."""
    text = _text(data)
    for parse in (procfs.parse_meminfo, procfs.parse_zoneinfo, procfs.parse_iomem,
                  memblock.parse_debugfs):
        with contextlib.suppress(ValueError):
            parse(text)
    bootparams.parse_loader(data)


def boot_setup(data: bytes) -> None:
    """``memledger boot-setup``: a kernel config and a command line."""
    text = _text(data)
    config, _, cmdline = text.partition("\n\n")
    try:
        words = bootsetup.shell_words(cmdline)
        bootsetup.plan(bootsetup.kernel_config(config), words, tuple(words[:3]))
        bootsetup.parse_size(cmdline)
    except ValueError:  # BootSetupError and shell quoting errors
        pass


def manifest(data: bytes) -> None:
    """A capture's manifest.json."""
    with contextlib.suppress(CaptureError):
        Manifest.from_json(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "kernel_log": kernel_log, "capture_gzip": capture_gzip, "capture_tar": capture_tar,
    "root_files": root_files, "trace": trace, "runtime_batch": runtime_batch,
    "kmsg_record": kmsg_record, "log_lines": log_lines, "proc_files": proc_files,
    "boot_setup": boot_setup, "manifest": manifest,
}


def _capture() -> bytes:
    from capturegen import make_capture

    return make_capture("6.12.117+deb12-amd64-default", 1, 1)


def _tar_of(capture: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(capture), mode="r:gz") as src, \
            tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src:
            if m.name == "manifest.json" or m.name.startswith("proc/"):  # keep it small
                fh = src.extractfile(m)
                dst.addfile(m, fh)
    return raw.getvalue()


def _batch() -> bytes:
    head = BatchHeader("0" * 32, "00000000-0000-0000-0000-000000000001", "bcc", "0.1.0",
                       datetime(2026, 11, 22, tzinfo=UTC), "h", "6.12.117+deb12-amd64")
    return render_batch(head, [RuntimeEvent(1, 1.5, "freed", "free_reserved_area", 0x1000, 0x3000,
                                            8192, "efi_free_boot_services")])


def _head(path: Path, n: int = 16384) -> bytes:
    return path.read_bytes()[:n]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "kernel_log": lambda: [_head(BOOT / "dmesg.txt"), _head(TRACE_BOOT / "sys/kernel/tracing/trace")],
    "capture_gzip": lambda: [_capture()],
    "capture_tar": lambda: [_tar_of(_capture())],
    "root_files": lambda: [bytes([i, 16, 0]) + b"0123456789abcdef" for i in range(0, 40, 7)],
    "trace": lambda: [_head(TRACE_BOOT / "sys/kernel/tracing/trace")],
    "runtime_batch": lambda: [_batch()],
    "kmsg_record": lambda: [b"6,1042,4519713,-;efi: Freeing EFI boot services memory: 46536K\n",
                            b"6,7,0,-;Memory: 1927380K/2096632K available (16384K kernel code)\n"],
    "log_lines": lambda: [b"\n".join(ln.split(b"] ", 1)[-1] for ln in _head(BOOT / "dmesg.txt").splitlines())],
    "proc_files": lambda: [_head(BOOT / "proc/meminfo"), _head(BOOT / "proc/zoneinfo", 4096),
                           _head(BOOT / "proc/iomem")],
    "boot_setup": lambda: [b"CONFIG_EFI=y\nCONFIG_DEFERRED_STRUCT_PAGE_INIT=y\n\n"
                           b"BOOT_IMAGE=/vmlinuz root=/dev/vda1 quiet memblock=debug log_buf_len=16M"],
    "manifest": lambda: [unpack(_capture()).manifest.to_json()],
}
