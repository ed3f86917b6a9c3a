"""Capture files for the backfill benchmark: the synthetic boots of :mod:`bench.corpus`,
each packed with its real source boot's /proc and /sys files, the way ``memledger
capture`` packs a live host.

* Half the kernel logs are in /dev/kmsg's record form (what a live capture holds), half
  in dmesg's (what a captured tree or a serial console holds).
* ``proc/sys/kernel/osrelease`` carries the varied release, like the log's banner.
* Hosts get four boots each; machine ids, boot ids and capture times are derived from the
  index, so the same seed gives the same files, byte for byte.

The ledger of every capture equals that of a capture of its unmodified source boot
(:func:`source_captures`), which is what the benchmark checks after ingesting.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from memledger.tracer.capture import Manifest, pack
from memledger.tracer.reader import FsTree, RecordingTree, read_tree

from bench.corpus import SOURCES, corpus, load_sources

__all__ = ("BOOTS_PER_HOST", "CaptureSet", "source_captures", "to_kmsg", "write_captures")

BOOTS_PER_HOST = 4
T0 = datetime(2026, 11, 1, tzinfo=UTC)
_LINE = re.compile(r"^\[ *(\d+)\.(\d+)\] ?(.*)$")


@dataclass(frozen=True, slots=True)
class CaptureSet:
    directory: Path
    files: list[Path]
    source: dict[tuple[str, str], str]   # (machine id, boot id) → source boot name
    bytes: int


def to_kmsg(text: str) -> str:
    """A dmesg-form log as /dev/kmsg records (``6,seq,usec,-;msg``)."""
    out = []
    for seq, line in enumerate(text.splitlines()):
        m = _LINE.match(line)
        out.append(f"6,{seq},{int(m[1]) * 1_000_000 + int(m[2])},-;{m[3]}" if m else line)
    return "\n".join(out) + "\n"


def _recorded(name: str) -> tuple[dict[str, bytes], set[str]]:
    rec = RecordingTree(FsTree(SOURCES / name / "root"))
    read_tree(rec, str(SOURCES / name / "root"))
    return dict(rec.files), set(rec.dirs)


def _ids(i: int) -> tuple[str, str]:
    host = hashlib.md5(f"bench-host-{i // BOOTS_PER_HOST}".encode()).hexdigest()
    boot = str(uuid.UUID(hashlib.md5(f"bench-boot-{i}".encode()).hexdigest()))
    return host, boot


def _manifest(i: int, release: str | None) -> Manifest:
    host, boot = _ids(i)
    return Manifest(machine_id=host, boot_id=boot, memledger_version="bench",
                    captured_at=T0 + timedelta(minutes=i), hostname=f"bench-{i // BOOTS_PER_HOST:05d}",
                    kernel_release=release, log_origin="dev/kmsg")


def write_captures(directory: Path, seed: int, n: int) -> CaptureSet:
    """``n`` capture files in ``directory`` (kept between runs: a stamp names the seed
    and count they were made with)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / ".stamp"
    want = f"seed={seed} n={n} v=1\n"
    files, source, size = [], {}, 0
    fresh = not (stamp.is_file() and stamp.read_text() == want)
    if fresh:
        for old in directory.glob("*.tar.gz"):
            old.unlink()
    recorded: dict[str, tuple[dict[str, bytes], set[str]]] = {}
    for i, boot in enumerate(corpus(seed, n, big=0, sources=load_sources())):
        host, boot_id = _ids(i)
        path = directory / f"{host}-{boot_id}.tar.gz"
        if fresh:
            if boot.source not in recorded:
                recorded[boot.source] = _recorded(boot.source)
            tree, dirs = recorded[boot.source]
            tree = dict(tree)
            tree["dmesg.txt"] = (to_kmsg(boot.text) if i % 2 == 0 else boot.text).encode()
            tree["proc/sys/kernel/osrelease"] = f"{boot.release}\n".encode()
            path.write_bytes(pack(tree, dirs, _manifest(i, boot.release)))
        files.append(path)
        source[(host, boot_id)] = boot.source
        size += path.stat().st_size
    if fresh:
        stamp.write_text(want)
    return CaptureSet(directory, files, source, size)


def source_captures(directory: Path, names: set[str]) -> dict[str, Path]:
    """A capture of each unmodified source boot (its ledger is the expected one)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, name in enumerate(sorted(names)):
        tree, dirs = _recorded(name)
        path = directory / f"{name}.tar.gz"
        path.write_bytes(pack(tree, dirs, _manifest(1_000_000 + k, None)))
        out[name] = path
    return out
