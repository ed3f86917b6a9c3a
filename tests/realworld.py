"""The real-world corpus: kernel logs that nobody here wrote, and what each must give.

tests/fixtures/realworld/manifest.jsonl names every log: where it was published (GitHub
repository, path, commit and git blob), its sha256 and size, the format it is written in,
its kernel and whether it booted through EFI, as far as its own lines say. The logs
themselves are kept whole, byte for byte, in a corpus folder: ``$MEMLEDGER_REALWORLD``,
or ``realworld/`` in the shared folder beside the checkout. ``python tests/realworld.py
gather --mirror DIR --out DIR`` writes that folder from git snapshots of the repositories
(``DIR/owner+name/…/repo``, bare), checking every blob against the manifest.

The oracle (:func:`check_boot`) reads each log's raw lines with regular expressions of its
own, never memledger's parsers: the figures a kernel printed are the expected values.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "fixtures" / "realworld" / "manifest.jsonl"
# docs/analyze.md lists the formats and holds the corpus table.
README = HERE.parent / "docs" / "analyze.md"

# The formats docs/analyze.md lists as read; a log in any of them must never be refused.
READ_FORMATS = frozenset({
    "dmesg", "dmesg-caller", "dmesg-ctime", "dmesg-iso", "dmesg-raw", "dmesg-decode",
    "plain", "kmsg", "journal", "syslog", "syslog-iso",
})


@dataclass(frozen=True)
class Entry:
    """One manifest line."""

    file: str
    repo: str
    path: str
    commit: str
    blob: str
    sha256: str
    bytes: int
    format: str
    kernel: str | None
    efi: bool | None
    notes: str

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Entry:
        return cls(doc["file"], doc["repo"], doc["path"], doc["commit"], doc["blob"],
                   doc["sha256"], doc["bytes"], doc["format"], doc.get("kernel"),
                   doc.get("efi"), doc.get("notes", ""))


def manifest() -> list[Entry]:
    return [Entry.of(json.loads(line)) for line in MANIFEST.read_text().splitlines() if line]


def corpus_dir() -> Path:
    env = os.environ.get("MEMLEDGER_REALWORLD")
    return Path(env) if env else HERE.parent.parent / "shared" / "realworld"


# --- the oracle: the log's own lines ----------------------------------------------------

# The banner starts a message: after a time stamp or caller id, "kernel:", a kmsg header.
BANNER = re.compile(r"(?:^|[\];>] ?|\] c\d+ +\d+ |kernel: ?|CPU 0x\w+ \[0x\w+\] )Linux version \d")
RELEASE = re.compile(r"Linux version (\S+)")
EFI_LINE = re.compile(r"(?:efi: )?EFI v\d[\d.]* by |efi: mem\d+: |efi: Freeing EFI boot services")
EFI_FREED = re.compile(r"efi: Freeing EFI boot services memory: (\d+)K")
MEMORY = re.compile(r"Memory: \d+[Kk]/\d+[Kk] available \(.*?(\d+)[Kk] reserved")
# A message starts the line, or follows a time stamp (and Samsung's "c0      1"),
# "kernel:", a kmsg header or a priority.
_START = r"(?:^|\] (?:c\d+ +\d+ )?|kernel: ?|;|>)"
FREEING = re.compile(_START + r"(?:efi: )?Freeing (.+?) memory: (\d+)[Kk]"
                     r"(?: \([0-9a-fA-Fx]+ - [0-9a-fA-Fx]+\))?\s*$")
FREED_V3 = re.compile(_START + r"Freeing (.+?)(?: memory)?: (\d+)k freed\s*$")
INIT_DONE = re.compile(r"Freeing unused kernel|Freeing init memory|debug: unmapping init |"
                       r"Write protecting the kernel read-only data|Run \S+ as init process")
ZERO_TIME = re.compile(r"\[\s*0\.000000\]|^\d+,\d+,0,")  # dmesg's, or a kmsg record's


def lines_of(data: bytes) -> list[str]:
    """The log's lines as any text tool sees them (NUL and CR aside)."""
    text = data.decode("utf-8", errors="replace").replace("\x00", "")
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def check_boot(lines: list[str], ledger: dict[str, Any], first_boot: bool) -> list[str]:
    """What is wrong with one boot's ledger, from the lines [first, last] it was read from."""
    first, last = ledger["fidelity"]["log_lines"]
    span = lines[first - 1:last]
    problems: list[str] = []
    where = f"lines {first}-{last}"

    banners = [ln for ln in span if BANNER.search(ln)]
    complete = bool(banners) and (BANNER.search(span[0]) is not None
                                  or ZERO_TIME.search(span[0]) is not None)
    # After the first, a boot starts at its banner, a journal boot id, or at least at time
    # zero (its banner line lost, as in a syslog torn at a crash).
    if not first_boot and not banners and ledger["boot"]["boot_id"] is None \
            and not ZERO_TIME.search(span[0]):
        problems.append(f"{where}: a boot without a banner after the first: split inside a boot")
    if len(banners) > 1:
        problems.append(f"{where}: {len(banners)} banners in one boot: two boots read as one")
    if banners:
        m = RELEASE.search(banners[0])
        if m and ledger["kernel"]["release"] != m.group(1):
            problems.append(f"{where}: release {ledger['kernel']['release']!r}, the log says "
                            f"{m.group(1)!r}")

    efi_lines = any(EFI_LINE.search(ln) for ln in span)
    efi = ledger["firmware"]["efi"]
    if efi_lines and efi is not True:
        problems.append(f"{where}: the log has EFI lines, the ledger says efi={efi}")
    if efi is True and not efi_lines:
        problems.append(f"{where}: no EFI line in the log, the ledger says EFI")
    bs = ledger["efi_boot_services"]
    codes = {a["code"] for a in ledger["anomalies"]}
    if efi is not True:
        claimed = [k for k in ("total_bytes", "reclaimed_bytes", "kept_bytes", "leaked_bytes")
                   if bs[k] is not None]
        if ledger["low_memory"]["boot_services_bytes"] is not None:
            claimed.append("low_memory.boot_services_bytes")
        if claimed:
            problems.append(f"{where}: not an EFI boot, yet {', '.join(claimed)} known")
        if codes & {"efi_debug_set", "reclaim_unknown", "kept_unexplained"}:
            problems.append(f"{where}: not an EFI boot, yet {sorted(codes)}")

    freed = [int(m.group(1)) * 1024 for ln in span if (m := EFI_FREED.search(ln))]
    if freed and bs["cross_checks"].get("freeing_line_bytes") != sum(freed):
        problems.append(f"{where}: 'Freeing EFI boot services memory' says {sum(freed)} bytes, "
                        f"the ledger {bs['cross_checks'].get('freeing_line_bytes')}")
    if freed and not ledger["kernel"]["kdump"] and bs["reclaimed_bytes"] != sum(freed):
        problems.append(f"{where}: reclaimed {bs['reclaimed_bytes']}, the kernel printed "
                        f"{sum(freed)}")
    if bs["total_bytes"] is not None and bs["reclaimed_bytes"] is not None \
            and bs["kept_bytes"] is not None \
            and bs["reclaimed_bytes"] + bs["kept_bytes"] != bs["total_bytes"]:
        problems.append(f"{where}: reclaimed + kept != total")

    acct = ledger["kernel_accounting"]
    memory = next((m for ln in span if (m := MEMORY.search(ln))), None)
    reserved = int(memory.group(1)) * 1024 if memory else None
    if acct["boot_reserved_bytes"] != reserved:
        problems.append(f"{where}: 'Memory: …reserved' says {reserved}, the ledger "
                        f"{acct['boot_reserved_bytes']}")
    by_name: dict[str, int] = {}
    for ln in span:
        m = FREEING.search(ln) or FREED_V3.search(ln)
        if m:
            by_name[m.group(1)] = by_name.get(m.group(1), 0) + int(m.group(2)) * 1024
    if acct["freed_by_name"] != by_name:
        problems.append(f"{where}: Freeing lines say {by_name}, the ledger "
                        f"{acct['freed_by_name']}")

    ended = any(INIT_DONE.search(ln) for ln in span)
    truncated = "log_truncated" in codes
    if truncated != (not complete or not ended):
        problems.append(f"{where}: log_truncated={truncated}, but the log "
                        f"{'starts at its banner' if complete else 'lost its start'} and "
                        f"{'reaches' if ended else 'does not reach'} the end of kernel init")
    return problems


# --- gathering the logs from git snapshots ----------------------------------------------

def _snapshots(mirror: Path, repo: str) -> Iterator[Path]:
    base = mirror / repo.replace("/", "+")
    yield from (p.parent for p in base.glob("**/HEAD") if (p.parent / "objects").is_dir())


def gather(mirror: Path, out: Path) -> int:
    """Write every manifest log to ``out`` from the snapshots under ``mirror``."""
    out.mkdir(parents=True, exist_ok=True)
    missing = 0
    for e in manifest():
        data = None
        for git_dir in _snapshots(mirror, e.repo):
            proc = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "blob", e.blob],
                                  capture_output=True, check=False)
            if proc.returncode == 0:
                data = proc.stdout
                break
        if data is None or hashlib.sha256(data).hexdigest() != e.sha256:
            print(f"realworld: {e.file}: blob {e.blob} of {e.repo} not found", file=sys.stderr)
            missing += 1
            continue
        (out / e.file).write_bytes(data)
    return missing


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gather", help="write the corpus from git snapshots")
    g.add_argument("--mirror", type=Path, required=True)
    g.add_argument("--out", type=Path, default=corpus_dir())
    args = ap.parse_args()
    sys.exit(1 if gather(args.mirror, args.out) else 0)
