"""Broken capture files (issue 8): bad gzip, bad tar, bad manifest, hostile members.

Each must be refused with one line naming the file, by ``analyze`` (exit 2) and by
``ingest`` (exit 2, nothing stored), and nothing may be written outside, whatever the
member names say. The good capture next to them proves the harness can succeed.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from capturegen import BOOT_NAMES, make_capture
from conftest import run_cli
from contract import EXIT2, analyze_contract, fingerprint

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

GOOD = make_capture("6.12.117+deb12-amd64-default", 1, 1)


def _members(data: bytes = GOOD) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            fh = tar.extractfile(m)
            out.append((m, fh.read() if fh else b""))
    return out


MANIFEST = json.loads(dict((m.name, d) for m, d in _members())["manifest.json"])


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def _with(extra: tarfile.TarInfo, data: bytes = b"") -> bytes:
    """The good capture plus one member."""
    if extra.isreg():
        extra.size = len(data)
    return _tar([*_members(), (extra, data)])


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def _manifest(**change: object) -> bytes:
    return _manifest_bytes(json.dumps({**MANIFEST, **change}).encode())


def _without_manifest() -> bytes:
    return _tar([(m, d) for m, d in _members() if m.name != "manifest.json"])


def _manifest_bytes(body: bytes) -> bytes:
    info = _info("manifest.json")
    info.size = len(body)
    return _tar([(info, body) if m.name == "manifest.json" else (m, d) for m, d in _members()])


def _huge_header() -> bytes:
    """A member whose header claims 300 MiB and whose data is not there."""
    info = _info("dmesg.txt")
    info.size = 300 << 20
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        body = json.dumps(MANIFEST).encode()
        m = _info("manifest.json")
        m.size = len(body)
        tar.addfile(m, io.BytesIO(body))
        tar.fileobj.write(info.tobuf(tarfile.USTAR_FORMAT))  # type: ignore[union-attr]
    return gzip.compress(raw.getvalue() + b"\0" * 4096, mtime=0)


# name -> (bytes, a phrase the one-line error must contain)
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "gzip cut in half": (lambda: GOOD[: len(GOOD) // 2], "cut short"),
    "gzip of random bytes": (lambda: gzip.compress(random.Random(3).randbytes(20000)), "tar"),
    "gzip of nothing": (lambda: gzip.compress(b""), "no manifest.json"),
    "good gzip then garbage": (lambda: GOOD + b"trailing garbage", "not a readable tar.gz"),
    "no manifest": (_without_manifest, "no manifest.json"),
    "manifest is not JSON": (lambda: _manifest_bytes(b"{\"format\": "), "is not JSON"),
    "manifest is a JSON list": (lambda: _manifest_bytes(b"[1, 2]"), "is not a memledger-capture"),
    "manifest of another format": (lambda: _manifest(format="pm-graph"), "is not a memledger-capture"),
    "manifest from a future memledger": (lambda: _manifest(format_version=99), "format_version 99"),
    "machine id not hex": (lambda: _manifest(machine_id="zz" * 16), "is not 32 hex digits"),
    "boot id not a UUID": (lambda: _manifest(boot_id="yesterday"), "is not a UUID"),
    "time without a zone": (lambda: _manifest(captured_at="2026-11-22T10:00:00"), "has no time zone"),
    "unreadable of the wrong type": (lambda: _manifest(unreadable=[1]), "unreadable must map"),
    "path traversal ../": (lambda: _with(_info("../../../tmp/memledger-escape"), b"x"),
                           "path leaves the capture"),
    "path traversal inside a path": (lambda: _with(_info("proc/../../escape"), b"x"),
                                     "path leaves the capture"),
    "absolute path": (lambda: _with(_info("/etc/cron.d/memledger"), b"x"), "path leaves the capture"),
    "symlink member": (lambda: _with(_info("proc/vmcore", tarfile.SYMTYPE, "/etc/shadow")),
                       "not a regular file or directory"),
    "hard link member": (lambda: _with(_info("proc/kcore", tarfile.LNKTYPE, "dmesg.txt")),
                         "not a regular file or directory"),
    "character device member": (lambda: _with(_info("dev/mem", tarfile.CHRTYPE)),
                                "not a regular file or directory"),
    "FIFO member": (lambda: _with(_info("dev/fifo", tarfile.FIFOTYPE)),
                    "not a regular file or directory"),
    "a member twice": (lambda: _with(_info("dmesg.txt"), b"[    0.000000] Linux version 1\n"),
                       "appears twice"),
    "a header claiming 300 MiB": (_huge_header, "tar"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_capture_is_refused_in_one_line(case: str, tmp_path: Path) -> None:
    make, phrase = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    path = work / "bad.tar.gz"
    path.write_bytes(make())
    outside = fingerprint(tmp_path)
    analyze_contract(path, EXIT2)
    proc = run_cli("analyze", str(path))
    assert phrase in proc.stderr, proc.stderr
    db = tmp_path / "m.db"
    ing = run_cli("ingest", "--db", f"sqlite:///{db}", str(path))
    assert ing.returncode == 2 and "Traceback" not in ing.stderr, ing.stderr
    assert str(path) in ing.stderr and phrase in ing.stderr, ing.stderr
    assert not (tmp_path / "tmp").exists() and not Path("/tmp/memledger-escape").exists()
    db.unlink(missing_ok=True)
    assert fingerprint(tmp_path) == outside  # nothing written anywhere in the tree


def test_the_good_capture_passes_the_same_harness(tmp_path: Path) -> None:
    path = tmp_path / "good.tar.gz"
    path.write_bytes(GOOD)
    from conftest import kernel_efi_freed_bytes
    text = (Path(__file__).parents[1] / "fixtures" / "boots" / "6.12.117+deb12-amd64-default"
            / "root" / "dmesg.txt").read_text()
    analyze_contract(path, [kernel_efi_freed_bytes(text)])
    assert "6.12.117+deb12-amd64-default" in BOOT_NAMES
