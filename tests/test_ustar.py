"""tracer/ustar.read_plain against tarfile, which stays the reference and the fallback."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from capturegen import make_capture
from memledger.tracer import capture
from memledger.tracer.capture import CaptureError, unpack
from memledger.tracer.ustar import read_plain


def _tarfile_view(raw: bytes) -> list[tuple[str, str, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for m in tar:
            fh = tar.extractfile(m) if m.isreg() else None
            out.append((m.name, "dir" if m.isdir() else "file", fh.read() if fh else b""))
    return out


def _tar(fmt: int, members: list[tarfile.TarInfo], data: bytes = b"abc") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return raw.getvalue()


def test_a_packed_capture_reads_the_same_as_with_tarfile() -> None:
    raw = gzip.decompress(make_capture("6.12.117+deb12-amd64-memblock", 3, 1))
    plain = read_plain(raw)
    assert plain is not None and len(plain) > 100
    assert plain == _tarfile_view(raw)


def test_a_name_in_the_ustar_prefix_field_is_joined() -> None:
    name = "sys/" + "d" * 120 + "/start"           # over 100 bytes: ustar splits it
    raw = _tar(tarfile.USTAR_FORMAT, [tarfile.TarInfo(name)])
    assert raw[345:349] == b"sys/"                   # the prefix field is in use
    assert read_plain(raw) == _tarfile_view(raw) == [(name, "file", b"abc")]


def _symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("dmesg.txt")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
    return info


def _bad_checksum() -> bytes:
    raw = bytearray(_tar(tarfile.USTAR_FORMAT, [tarfile.TarInfo("a")]))
    raw[0:1] = b"b"
    return bytes(raw)


NOT_PLAIN = {
    "pax header (non-ASCII name)": lambda: _tar(tarfile.PAX_FORMAT, [tarfile.TarInfo("dmésg.txt")]),
    "GNU long name": lambda: _tar(tarfile.GNU_FORMAT, [tarfile.TarInfo("x" * 150)]),
    "symlink": lambda: _tar(tarfile.USTAR_FORMAT, [_symlink()]),
    "bad checksum": _bad_checksum,
    "cut short": lambda: _tar(tarfile.USTAR_FORMAT, [tarfile.TarInfo("a")])[:600],
    "v7 (no ustar magic)": lambda: _tar(tarfile.USTAR_FORMAT, [tarfile.TarInfo("a")]).replace(
        b"ustar\x0000", b"\0" * 8, 1),
}


@pytest.mark.parametrize("case", sorted(NOT_PLAIN))
def test_anything_unusual_is_left_to_tarfile(case: str) -> None:
    assert read_plain(NOT_PLAIN[case]()) is None


def test_unpack_refuses_more_than_the_cap_before_inflating_it_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "MAX_UNPACKED_BYTES", 1 << 20)
    monkeypatch.setattr(capture, "MAX_MEMBERS", 16)
    bomb = gzip.compress(bytes(64 << 20))            # 64 MiB of zeros, 64 KiB compressed
    with pytest.raises(CaptureError, match="unpacks to more than 1048576 bytes"):
        unpack(bomb)


def test_several_gzip_members_and_zero_padding_are_one_stream() -> None:
    whole = gzip.decompress(make_capture("6.1.0-47-amd64-default", 1, 1))
    half = len(whole) // 2
    split = gzip.compress(whole[:half]) + gzip.compress(whole[half:]) + bytes(100)
    assert unpack(split).manifest == unpack(gzip.compress(whole)).manifest
