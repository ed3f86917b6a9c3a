"""The benchmark corpus generator (bench/corpus.py): deterministic, and its boots keep
their source boot's ledger, so the benchmarks parse realistic data whose right answer
is known (the source boots' figures come from the kernel's own output)."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import analyze_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.corpus import corpus, load_sources


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    a = [b.text for b in corpus(7, 6, big=1, big_pairs=2000)]
    assert a == [b.text for b in corpus(7, 6, big=1, big_pairs=2000)]
    assert a != [b.text for b in corpus(8, 6, big=1, big_pairs=2000)]


def test_a_varied_boot_keeps_its_source_ledger(tmp_path: Path) -> None:
    src = load_sources()
    (boot,) = corpus(3, 1, big=1, big_pairs=5000)
    assert boot.text.count("memblock_reserve:") >= 5000 + src[boot.source].count("memblock_reserve:")
    assert boot.release not in src[boot.source]
    (tmp_path / "src.log").write_text(src[boot.source])
    (tmp_path / "var.log").write_text(boot.text)
    a, v = analyze_json(tmp_path / "src.log"), analyze_json(tmp_path / "var.log")
    a, v = (x[0] if isinstance(x, list) else x for x in (a, v))
    assert v["kernel"]["release"] == boot.release
    assert v["efi_boot_services"] == a["efi_boot_services"]
    assert v["low_memory"] == a["low_memory"]
    assert v["efi_boot_services"]["total_bytes"] is not None
