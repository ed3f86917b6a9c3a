"""A deterministic corpus of synthetic boots, derived from the real lab boots.

Each synthetic boot is one real kernel log from tests/fixtures/boots (Debian 6.1 and
6.12 kernels under OVMF, every lab configuration except SeaBIOS), changed in ways that
keep its ledger computable and meaningful:

* the kernel release keeps its major.minor (the kernel-version logic depends on it) and
  gets another Debian ABI or stable number;
* the firmware ids (the DMI line's vendor, product and BIOS version) vary;
* memblock=debug boots get extra ``memblock_alloc_try_nid``/``memblock_reserve`` pairs,
  the shape of a large machine's sparse-memmap allocations (a few hundred on most boots,
  50 000 pairs, over 100 000 lines, on the big ones), with varied sizes and addresses.
  They sit inside the largest ``setup_log_buf`` reservation, which the kernel never
  frees, so the boot's reserved union, and hence its ledger, equals the source's.

The same seed gives the same bytes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ("SOURCES", "Boot", "corpus", "load_sources", "release_variant", "vary")

SOURCES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "boots"

_RELEASE = re.compile(r"Linux version (\S+)")
_DMI = re.compile(r"DMI: .*$", re.M)
_RESERVE = re.compile(r"^(\[ *[\d.]+\] )memblock_reserve: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\] (\S+)$",
                      re.M)
_ALLOC_BEFORE = re.compile(r"memblock_alloc_try_nid: (\d+) bytes .* setup_log_buf\+")
VENDORS = (("Dell Inc.", "PowerEdge R650"), ("HPE", "ProLiant DL380 Gen10 Plus"),
           ("Lenovo", "ThinkSystem SR650 V2"), ("Supermicro", "SYS-1029U-TRTP2"),
           ("Amazon EC2", "m6i.large"), ("QEMU", "Standard PC (Q35 + ICH9, 2009)"))


@dataclass(frozen=True, slots=True)
class Boot:
    name: str          # source boot, then the variant number
    source: str        # the tests/fixtures/boots directory it came from
    release: str
    text: str          # the kernel log, dmesg format


def load_sources(root: Path = SOURCES) -> dict[str, str]:
    """The real boots' kernel logs by name (SeaBIOS boots have no EFI: left out)."""
    out = {}
    for d in sorted(root.iterdir()):
        log = d / "root" / "dmesg.txt"
        if log.is_file() and not d.name.endswith("-seabios"):
            out[d.name] = log.read_text()
    if not out:
        raise SystemExit(f"bench: no boots under {root}")
    return out


def release_variant(rng: random.Random, release: str) -> str:
    """Another Debian ABI or stable number of the same major.minor."""
    m = re.fullmatch(r"(\d+\.\d+)\.(\d+)-(\d+)-(.+)", release)        # 6.1.0-47-amd64
    if m:
        return f"{m[1]}.{m[2]}-{rng.randint(40, 60)}-{m[4]}"
    m = re.fullmatch(r"(\d+\.\d+)\.(\d+)(\+.+)", release)             # 6.12.117+deb12-amd64
    if m:
        return f"{m[1]}.{rng.randint(100, 130)}{m[3]}"
    m = re.fullmatch(r"(\d+\.\d+)(-.+)", release)                      # 7.3-amd64 (an rc)
    if m:
        return f"{m[1]}.{rng.randint(1, 9)}{m[2]}"
    return release


def _extra_allocations(rng: random.Random, text: str, pairs: int) -> str:
    """``pairs`` allocation pairs inside the largest setup_log_buf reservation."""
    best: tuple[int, int, int] | None = None   # (size, start, end of line)
    prev = ""
    for m in _RESERVE.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        prev = text[text.rfind("\n", 0, line_start - 1) + 1:line_start]
        start, end = int(m[2], 16), int(m[3], 16)
        if _ALLOC_BEFORE.search(prev) and (best is None or end - start > best[0] - best[1]):
            best = (end, start, m.end())
    if best is None or pairs == 0:
        return text
    end, start, at = best
    stamp = re.match(r"\[ *[\d.]+\] ", text[at - 200:at].rsplit("\n", 1)[-1])
    ts = stamp.group(0) if stamp else "[    0.000000] "
    cursor = end + 1
    lines = []
    for _ in range(pairs):
        size = rng.choice((64, 128, 192, 256, 512, 1024, 2048, 4096, 8192, 16384))
        align = 64 if size < 4096 else 4096
        top = cursor - size
        top -= top % align
        if top < start:
            cursor = end + 1   # wrap: stay inside the reservation
            top = cursor - size - (cursor - size) % align
        cursor = top
        lines.append(f"{ts}memblock_alloc_try_nid_raw: {size} bytes align={align:#x} nid={rng.randint(0, 1)} "
                     "from=0x0000000001000000 max_addr=0x0000000000000000 "
                     "__earlyonly_bootmem_alloc+0x1c/0x2d\n"
                     f"{ts}memblock_reserve: [{top:#018x}-{top + size - 1:#018x}] "
                     "memblock_alloc_range_nid+0xbd/0x180\n")
    return text[:at + 1] + "".join(lines) + text[at + 1:]


def vary(rng: random.Random, name: str, text: str, pairs: int) -> Boot:
    m = _RELEASE.search(text)
    old = m.group(1) if m else ""
    new = release_variant(rng, old) if old else ""
    out = text.replace(old, new) if old else text
    vendor, product = rng.choice(VENDORS)
    bios = f"{rng.randint(1, 3)}.{rng.randint(0, 19)}.{rng.randint(0, 9)}"
    out = _DMI.sub(f"DMI: {vendor} {product}, BIOS {bios} {rng.randint(1, 12):02d}/"
                   f"{rng.randint(1, 28):02d}/20{rng.randint(19, 26)}", out, count=1)
    if "memblock_reserve:" in out:
        out = _extra_allocations(rng, out, pairs)
    return Boot(name, name.rsplit("#", 1)[0], new, out)


def corpus(seed: int, n: int, big: int = 1, big_pairs: int = 50_000,
           sources: dict[str, str] | None = None) -> Iterator[Boot]:
    """``n`` boots, ``big`` of them with ``big_pairs`` extra allocation pairs (boots
    without memblock=debug stay as they are)."""
    src = sources if sources is not None else load_sources()
    names = sorted(src)
    # Boots whose setup_log_buf reservation the extra pairs go into: memblock=debug in the
    # pre-v6.16 format (v6.16+ prints "__memblock_reserve: … nid= flags=", kept as is).
    memblock = [k for k in names if _RESERVE.search(src[k])]
    rng = random.Random(seed)
    big_at = set(rng.sample(range(n), min(big, n)))
    for i in range(n):
        if i in big_at:
            name, pairs = rng.choice(memblock), big_pairs
        else:
            name = rng.choice(names)
            pairs = rng.randint(0, 40)
        yield vary(random.Random(rng.getrandbits(64)), f"{name}#{i}", src[name], pairs)
