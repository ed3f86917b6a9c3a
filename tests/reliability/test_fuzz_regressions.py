"""Replays the fuzz targets' seeds and every crasher atheris found (tests/fuzz/crashers/),
so a fixed crash stays fixed. The fuzzing itself is time-bounded in .ci/run (make fuzz)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

from fuzzrun import NAMES  # noqa: E402
from targets import SEEDS, TARGETS  # noqa: E402

CRASHERS = [(t, p) for t in NAMES for p in sorted((FUZZ / "crashers" / t).glob("*"))
            if p.is_file() and not p.name.startswith(".")]

def test_the_runner_knows_every_target() -> None:
    assert list(NAMES) == list(TARGETS) == list(SEEDS)


@pytest.mark.parametrize("target", NAMES)
def test_seeds_run_clean(target: str) -> None:
    seeds = SEEDS[target]()
    assert seeds and all(seeds)
    for seed in seeds:
        TARGETS[target](seed)


def test_every_kept_crasher_stays_fixed() -> None:
    """One test over tests/fuzz/crashers/*/ (a parameter per file would be a skip when
    there are none); each file is an input that once crashed its target."""
    for target, path in CRASHERS:
        TARGETS[target](path.read_bytes())
