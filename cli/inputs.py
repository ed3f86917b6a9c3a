"""Turn a command-line PATH into snapshots: a root directory, a log file, a trace file."""

from __future__ import annotations

import os
import stat
import sys

from memledger.tracer.capture import CaptureError, capture_evidence, is_capture, unpack
from memledger.tracer.evidence import Evidence, NotAKernelLog, build_evidence, is_trace_text
from memledger.tracer.reader import Snapshot, decode_text, read_root

__all__ = ("InputError", "load")

# A log file or pipe is read up to this size: a kernel log ring is at most 32 MiB, and a
# syslog or journal export of many boots a few times that.
MAX_INPUT_BYTES = 256 << 20
# More than this share of undecodable bytes in the first 64 KiB means "not text".
_BINARY_SHARE = 0.05


class InputError(Exception):
    """Unusable input; the message is one line naming the file (and line)."""


def _decode(path: str, data: bytes) -> str:
    head = data[:65536]
    if head:
        bad = head.count(0) + head.decode("utf-8", errors="replace").count("\ufffd")
        if bad > _BINARY_SHARE * len(head):
            raise InputError(f"{path}: binary data, not a kernel log or trace")
    return decode_text(data)


def _read_file(path: str) -> bytes:
    """The whole file or pipe, up to MAX_INPUT_BYTES; a device is refused unread."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    kind = "a character" if stat.S_ISCHR(mode) else "a block"
                    raise InputError(f"{path}: {kind} device, not a log file or capture")
                data = fh.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{path}: {os.strerror(exc.errno or 0) or exc}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{path}: more than {MAX_INPUT_BYTES >> 20} MiB; a kernel log is "
                         "far smaller (cut out the boots you want)")
    return data


def load(path: str) -> list[Evidence]:
    """Evidence for every boot in ``path``: a root directory, a capture file, a log or
    trace file, or -."""
    is_dir = False
    if path != "-":
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as exc:
            raise InputError(f"{path}: {os.strerror(exc.errno or 0) or exc}") from None
    try:
        if is_dir:
            snap = read_root(path)
            if snap.kernel_log is None and not snap.texts and not snap.traces \
                    and snap.firmware_memmap is None:
                raise InputError(f"{path}: no kernel log (dmesg.txt or dev/kmsg), /proc or /sys "
                                 "files found under this directory")
            return build_evidence(snap)
        data = _read_file(path)
        if is_capture(data):
            try:
                return capture_evidence(unpack(data), path)
            except CaptureError as exc:
                raise InputError(f"{path}: {exc}") from None
        text = _decode(path, data)
        if not text or text.isspace():  # not strip(): that copies the whole text
            raise InputError(f"{path}: empty file")
        snap = Snapshot(root=path)
        if is_trace_text(text):
            snap.traces[path] = text
        else:
            snap.kernel_log = text
        return build_evidence(snap, host_data=False)
    except NotAKernelLog as exc:
        raise InputError(str(exc)) from None
