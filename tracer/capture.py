"""Capture files: one boot's root-directory layout plus a manifest, as one tar.gz (pure).

``memledger capture`` writes them, the daemon's spool takes them, ``memledger analyze``
reads them. The layout is the one :func:`memledger.tracer.reader.read_tree` reads
(``dmesg.txt``, ``proc/…``, ``sys/…``), so an unpacked capture is also a valid root.
``manifest.json`` comes first; it is the versioned header the store keys boots on, in the
spirit of pm-graph's ``# kparams |`` header and KCIDB's versioned schema::

    {"format": "memledger-capture", "format_version": 1, "memledger_version": "0.1.0",
     "machine_id": "…32 hex…", "hostname": "web-17", "boot_id": "…uuid…",
     "captured_at": "2026-11-22T10:00:00.000000Z", "kernel_release": "6.12.117+deb12-amd64",
     "cmdline": "…", "log_origin": "dev/kmsg", "unreadable": {…}, "truncated": […]}

The same files and manifest always give the same bytes (fixed tar and gzip times), so a
file's sha256 identifies a capture.

Reading is strict: a member that is not a regular file or directory, a path that is
absolute or climbs out with ``..``, an oversized member, or a bad manifest rejects the
whole file with a one-line :class:`CaptureError`.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from memledger.tracer.caps import (
    CMDLINE_MAX,
    DNS_NAME_MAX,
    PATH_MAX,
    UTS_LEN,
    VERSION_MAX,
    check_host_files,
    check_member_path,
)
from memledger.tracer.evidence import Evidence, build_evidence
from memledger.tracer.reader import MAX_FILE_BYTES, MemTree, RecordingTree, Tree, read_tree
from memledger.tracer.untrusted import UntrustedError, check_text, load_json, parse_time
from memledger.tracer.ustar import Member, read_plain

__all__ = (
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "Capture",
    "CaptureError",
    "Manifest",
    "capture_evidence",
    "is_capture",
    "normalise_boot_id",
    "normalise_machine_id",
    "pack",
    "record",
    "unpack",
)

FORMAT = "memledger-capture"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_GZIP_MAGIC = b"\x1f\x8b"
# Caps that stop a gzip bomb or a tar of many tiny files, sized to real captures: the lab's
# unpack to 40-115 KiB in 30-600 members (a kernel log of up to 100 KiB, ~90 EFI runtime
# map entries). The largest real one holds a whole log ring (MAX_FILE_BYTES, 32 MiB) and,
# on a many-node server, up to E820_MAX_ENTRIES (3200) firmware memmap entries of four
# members each and ~1000 EFI runtime-map entries of six: 64 MiB and 32768 members hold that.
MAX_UNPACKED_BYTES = 64 << 20
MAX_MEMBERS = 32_768
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")


class CaptureError(ValueError):
    """The bytes are not a usable capture file; the message is one line."""


def normalise_machine_id(text: str) -> str:
    """machine-id(5): 32 lowercase hex digits (a UUID with dashes is accepted)."""
    value = text.strip().lower().replace("-", "")
    if not _MACHINE_ID.match(value):
        raise CaptureError(f"machine id {text.strip()[:40]!r} is not 32 hex digits")
    return value


def normalise_boot_id(text: str) -> str:
    """The kernel's boot_id: a UUID, written with dashes."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise CaptureError(f"boot id {text.strip()[:40]!r} is not a UUID") from None


def _utc(text: str) -> datetime:
    try:
        return parse_time(text, "captured_at")
    except UntrustedError as exc:
        raise CaptureError(str(exc)) from None


# The longest value each manifest string can hold (tracer/caps.py); paths and error
# reasons: PATH_MAX.
_MAX_CHARS = {"hostname": DNS_NAME_MAX, "kernel_release": UTS_LEN,
              "memledger_version": VERSION_MAX, "cmdline": CMDLINE_MAX}


def _checked(value: str, what: str, max_chars: int, controls: bool = False) -> str:
    try:
        return check_text(value, f"{MANIFEST}: {what}", max_chars, controls=controls)
    except UntrustedError as exc:
        raise CaptureError(str(exc)) from None


@dataclass(slots=True)
class Manifest:
    machine_id: str
    boot_id: str
    captured_at: datetime
    memledger_version: str
    hostname: str | None = None
    kernel_release: str | None = None
    cmdline: str | None = None
    log_origin: str | None = None
    unreadable: dict[str, str] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"format": FORMAT, **asdict(self)}
        d["captured_at"] = self.captured_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return (json.dumps(d, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            d = load_json(data, MANIFEST)
        except UntrustedError as exc:
            raise CaptureError(str(exc)) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CaptureError(f"{MANIFEST} is not a {FORMAT} manifest")
        version = d.get("format_version")
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise CaptureError(f"{MANIFEST}: format_version {version!r} is not supported "
                               f"(this memledger reads 1..{FORMAT_VERSION})")

        def text(key: str, required: bool = False) -> str | None:
            value = d.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or (required and not value):
                raise CaptureError(f"{MANIFEST}: {key} must be a string")
            # A command line may hold tabs; names and versions hold no control character.
            return _checked(value, key, _MAX_CHARS.get(key, PATH_MAX), key == "cmdline")

        unreadable = d.get("unreadable") or {}
        truncated = d.get("truncated") or []
        if not isinstance(unreadable, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in unreadable.items()):
            raise CaptureError(f"{MANIFEST}: unreadable must map paths to reasons")
        if not isinstance(truncated, list) or not all(isinstance(p, str) for p in truncated):
            raise CaptureError(f"{MANIFEST}: truncated must be a list of paths")
        for k, v in unreadable.items():
            _checked(k, "an unreadable path", PATH_MAX)
            _checked(v, f"the reason {k[:80]!r} is unreadable", PATH_MAX)
        for p in truncated:
            _checked(p, "a truncated path", PATH_MAX)
        return cls(
            machine_id=normalise_machine_id(text("machine_id", True) or ""),
            boot_id=normalise_boot_id(text("boot_id", True) or ""),
            captured_at=_utc(text("captured_at", True) or ""),
            memledger_version=text("memledger_version", True) or "",
            hostname=text("hostname"),
            kernel_release=text("kernel_release"),
            cmdline=text("cmdline"),
            log_origin=text("log_origin"),
            unreadable=dict(unreadable),
            truncated=list(truncated),
            format_version=version,
        )


@dataclass(slots=True)
class Capture:
    manifest: Manifest
    tree: MemTree


def is_capture(head: bytes) -> bool:
    """True when the bytes start like a capture file (gzip)."""
    return head[:2] == _GZIP_MAGIC


def _info(name: str, mtime: int, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = size, 0o644
    return info


def pack(files: dict[str, bytes], dirs: set[str], manifest: Manifest) -> bytes:
    """The capture file's bytes: manifest.json, then directories, then files, sorted."""
    mtime = int(manifest.captured_at.timestamp())
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        head = manifest.to_json()
        tar.addfile(_info(MANIFEST, mtime, len(head)), io.BytesIO(head))
        for d in sorted(x for x in dirs if x):
            tar.addfile(_info(d, mtime, directory=True))
        for rel in sorted(files):
            tar.addfile(_info(rel, mtime, len(files[rel])), io.BytesIO(files[rel]))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _member_path(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise CaptureError(f"member {name[:80]!r}: path leaves the capture")
    try:
        check_member_path(parts, name)
    except UntrustedError as exc:
        raise CaptureError(str(exc)) from None
    return "/".join(parts)


def _check_files(files: dict[str, bytes]) -> None:
    """The caps of tracer/caps.py on the capture's own files, as a CaptureError."""
    try:
        check_host_files(files)
    except UntrustedError as exc:
        raise CaptureError(str(exc)) from None


def _gunzip(data: bytes) -> bytes:
    """Every gzip member of ``data``, inflated at once (much faster than a streamed
    tarfile read over gzip: BENCHMARKS.md), but never past the unpacked-size cap."""
    limit = MAX_UNPACKED_BYTES + 1024 * MAX_MEMBERS  # tar headers on top of the contents
    out: list[bytes] = []
    total = 0
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = d.decompress(rest, limit - total + 1)
        total += len(chunk)
        if total > limit or d.unconsumed_tail:
            raise CaptureError(f"unpacks to more than {MAX_UNPACKED_BYTES} bytes")
        if not d.eof:
            raise CaptureError("not a readable tar.gz (the gzip data is cut short)")
        out.append(chunk)
        rest = d.unused_data.lstrip(b"\0")  # gzip(1) allows zero padding after a member
    return b"".join(out)


def _tarfile_members(raw: bytes) -> Iterator[Member]:
    """Any archive tarfile reads; a member that is neither a file nor a directory is
    refused."""
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for member in tar:
            rel = _member_path(member.name)
            if member.isdir():
                yield rel, "dir", b""
                continue
            if not member.isreg():
                raise CaptureError(f"member {rel[:80]!r}: not a regular file or directory")
            if member.size > MAX_FILE_BYTES:  # before reading it
                raise CaptureError(f"member {rel[:80]!r}: {member.size} bytes is over the "
                                   f"{MAX_FILE_BYTES}-byte cap")
            fh = tar.extractfile(member)
            yield rel, "file", fh.read() if fh is not None else b""


def unpack(data: bytes) -> Capture:
    """Parse a capture file's bytes. Raises :class:`CaptureError`."""
    if not is_capture(data):
        raise CaptureError("not a memledger capture (not gzip data)")
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    manifest: bytes | None = None
    total = 0
    try:
        raw = _gunzip(data)
        # What pack() writes takes the fast path; anything else goes through tarfile.
        plain = read_plain(raw)
        members = iter(plain) if plain is not None else _tarfile_members(raw)
        for count, (name, kind, content) in enumerate(members, 1):
            if count > MAX_MEMBERS:
                raise CaptureError(f"more than {MAX_MEMBERS} members")
            rel = _member_path(name)
            if kind == "dir":
                dirs.add(rel)
                continue
            if len(content) > MAX_FILE_BYTES:
                raise CaptureError(f"member {rel[:80]!r}: {len(content)} bytes is over the "
                                   f"{MAX_FILE_BYTES}-byte cap")
            total += len(content)
            if total > MAX_UNPACKED_BYTES:
                raise CaptureError(f"unpacks to more than {MAX_UNPACKED_BYTES} bytes")
            if rel == MANIFEST:
                if manifest is not None:
                    raise CaptureError(f"member {MANIFEST!r} appears twice")
                manifest = content
            elif rel in files:
                raise CaptureError(f"member {rel[:80]!r} appears twice")
            else:
                files[rel] = content
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CaptureError(f"not a readable tar.gz ({exc or type(exc).__name__})") from None
    if manifest is None:
        raise CaptureError(f"no {MANIFEST}")
    m = Manifest.from_json(manifest)
    _check_files(files)
    return Capture(m, MemTree(files, dirs, m.unreadable, m.truncated))


def record(tree: Tree, root: str, *, memledger_version: str, captured_at: datetime,
           machine_id: str | None = None, boot_id: str | None = None,
           hostname: str | None = None) -> tuple[bytes, Manifest]:
    """Read everything memledger knows from ``tree`` and pack it as a capture file.

    The ids come from the tree (``etc/machine-id``, ``proc/sys/kernel/random/boot_id``,
    ``proc/sys/kernel/hostname``) unless given. Raises :class:`CaptureError` when the
    machine id or boot id is missing or malformed, naming the option that supplies it,
    and for anything :func:`unpack` would refuse (a file or manifest string over its cap):
    what this writes, ``ingest`` reads.
    """
    rec = RecordingTree(tree)
    snap = read_tree(rec, root)
    try:
        check_host_files(rec.files)
    except UntrustedError as exc:
        raise CaptureError(f"{root}: {exc}") from None
    text = snap.text

    def ident(given: str | None, key: str, rel: str, option: str) -> str:
        value = given if given is not None else (text(key) or "").strip()
        if not value:
            raise CaptureError(f"{root}: no {key.replace('_', ' ')} ({rel} is missing); "
                               f"pass {option}")
        return value

    manifest = Manifest(
        machine_id=normalise_machine_id(ident(machine_id, "machine_id", "etc/machine-id",
                                              "--machine-id")),
        boot_id=normalise_boot_id(ident(boot_id, "boot_id", "proc/sys/kernel/random/boot_id",
                                        "--boot-id")),
        captured_at=captured_at.astimezone(UTC),
        memledger_version=memledger_version,
        hostname=hostname if hostname is not None else (text("hostname") or "").strip() or None,
        kernel_release=(text("osrelease") or "").strip() or None,
        cmdline=(text("proc_cmdline") or "").strip() or None,
        log_origin=rec.log_origin,
        unreadable=dict(snap.unreadable),
        truncated=list(snap.truncated),
    )
    Manifest.from_json(manifest.to_json())  # the checks unpack() makes, before writing
    return pack(rec.files, rec.dirs, manifest), manifest


def capture_evidence(cap: Capture, source: str) -> list[Evidence]:
    """Evidence for every boot in a capture; the manifest's ids name the last (live) one.

    Raises :class:`~memledger.tracer.evidence.NotAKernelLog` like
    :func:`~memledger.tracer.evidence.build_evidence`.
    """
    evidence = build_evidence(read_tree(cap.tree, source))
    last = evidence[-1]
    last.machine_id = cap.manifest.machine_id
    last.boot_id = cap.manifest.boot_id
    return evidence
