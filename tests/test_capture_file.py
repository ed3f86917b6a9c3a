"""Capture files: ``memledger capture`` on real trees (this host's ``/`` included), reading
them back with ``analyze``, and refusing broken or hostile ones with one line and exit 2."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from capturegen import BOOTS, make_capture
from conftest import MEMLEDGER, run_cli
from memledger.tracer.capture import MANIFEST, CaptureError, unpack

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

MID = "0123456789abcdef0123456789abcdef"
ROOT = BOOTS / "6.12.117+deb12-amd64-trace" / "root"


def _figures(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "boot"}


def test_capture_of_a_tree_holds_its_files_and_analyzes_the_same(tmp_path: Path) -> None:
    out = tmp_path / "c.tar.gz"
    proc = run_cli("capture", "--root", str(ROOT), "--machine-id", MID, "--hostname", "lab",
                   "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    cap = unpack(out.read_bytes())
    m = cap.manifest
    assert (m.machine_id, m.hostname, m.log_origin) == (MID, "lab", "dmesg.txt")
    assert m.boot_id == (ROOT / "proc/sys/kernel/random/boot_id").read_text().strip()
    assert m.kernel_release == (ROOT / "proc/sys/kernel/osrelease").read_text().strip()
    assert m.cmdline == (ROOT / "proc/cmdline").read_text().strip()
    for rel in ("dmesg.txt", "proc/iomem", "sys/kernel/tracing/trace",
                "sys/firmware/memmap/3/start"):
        assert cap.tree.files[rel] == (ROOT / rel).read_bytes()
    with tarfile.open(out) as tar:
        assert tar.getnames()[0] == MANIFEST
    from_file = json.loads(run_cli("analyze", str(out), "--json").stdout)
    from_tree = json.loads(run_cli("analyze", str(ROOT), "--json").stdout)
    assert _figures(from_file) == _figures(from_tree)
    assert from_file["boot"]["machine_id"] == MID


def test_capture_into_a_directory_names_the_file_by_ids(tmp_path: Path) -> None:
    proc = run_cli("capture", "--root", str(ROOT), "--machine-id", MID, "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    boot = (ROOT / "proc/sys/kernel/random/boot_id").read_text().strip()
    assert [p.name for p in tmp_path.iterdir()] == [f"{MID}-{boot}.tar.gz"]


def test_same_tree_and_manifest_give_the_same_bytes() -> None:
    a = make_capture("6.1.0-47-amd64-memblock", 1, 1)
    assert a == make_capture("6.1.0-47-amd64-memblock", 1, 1)
    assert a != make_capture("6.1.0-47-amd64-memblock", 1, 2)


def test_capture_of_this_host() -> None:
    """The live root: ids from this kernel and /etc/machine-id, the log from /dev/kmsg."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    machine = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
    args = ["capture", "-o", "-"] + ([] if machine else ["--machine-id", MID])
    raw = subprocess.run([MEMLEDGER, *args], capture_output=True, check=True).stdout
    cap = unpack(raw)
    assert cap.manifest.boot_id == boot
    assert cap.manifest.machine_id == (machine or MID)
    assert cap.manifest.kernel_release == os.uname().release
    assert cap.manifest.log_origin == "dev/kmsg"
    assert cap.tree.files["proc/meminfo"].startswith(b"MemTotal:")


def test_capture_without_machine_id_says_which_option(tmp_path: Path) -> None:
    proc = run_cli("capture", "--root", str(ROOT), "-o", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "etc/machine-id is missing" in proc.stderr and "--machine-id" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(raw.getvalue())


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _manifest(**change: object) -> tuple[tarfile.TarInfo, bytes]:
    good = unpack(make_capture("6.1.0-47-amd64-default", 1, 1)).manifest.to_json()
    d = json.loads(good)
    d.update(change)
    return _file(MANIFEST, json.dumps(d).encode())


def _symlink(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
    return info, b""


GOOD = make_capture("6.1.0-47-amd64-default", 1, 1)
BAD = {
    "truncated gzip": (GOOD[: len(GOOD) // 2], "not a readable tar.gz"),
    "gzip of garbage": (gzip.compress(os.urandom(4096)), "not a readable tar.gz"),
    "no manifest": (_tar([_file("dmesg.txt")]), "no manifest.json"),
    "manifest not json": (_tar([_file(MANIFEST, b"{nope")]), "is not JSON"),
    "future format": (_tar([_manifest(format_version=99)]), "format_version 99 is not supported"),
    "bad machine id": (_tar([_manifest(machine_id="xyz")]), "is not 32 hex digits"),
    "bad boot id": (_tar([_manifest(boot_id="nope")]), "is not a UUID"),
    "naive time": (_tar([_manifest(captured_at="2026-11-01T00:00:00")]), "has no time zone"),
    "path traversal": (_tar([_manifest(), _file("../../etc/cron.d/x")]), "path leaves the capture"),
    "absolute path": (_tar([_manifest(), _file("/etc/passwd")]), "path leaves the capture"),
    "symlink member": (_tar([_manifest(), _symlink("dmesg.txt")]), "not a regular file or directory"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_capture_files_are_one_line_exit_2(case: str, tmp_path: Path) -> None:
    data, why = BAD[case]
    path = tmp_path / "c.tar.gz"
    path.write_bytes(data)
    with pytest.raises(CaptureError, match=why.replace("(", r"\(")):
        unpack(data)
    for cmd in (["analyze", str(path)], ["ingest", "--db", str(tmp_path / "m.db"), str(path)]):
        proc = run_cli(*cmd)
        assert proc.returncode == 2, (cmd, proc.stderr)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("memledger: error:")]
        assert len(errors) == 1 and errors[0].startswith(f"memledger: error: {path}: ")
        assert why in errors[0] and "Traceback" not in proc.stderr
    assert path.read_bytes() == data  # the input is never touched


def test_plain_text_is_read_as_a_log_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "c.tar.gz"
    path.write_bytes(b"hello world\n" * 10)
    proc = run_cli("analyze", str(path))
    assert proc.returncode == 2
    assert proc.stderr == f"memledger: error: {path}:1: no kernel messages found: 10 lines " \
        "read as plain, none of them a boot or memory message (no 'Linux version', E820, " \
        "EFI, 'Memory:' or 'Freeing' line)\n"
