"""tracer/intervals.spans merges plain integer pairs before portion sees them; portion's
own one-by-one union is the reference."""

from __future__ import annotations

import random

import portion as P
import pytest
from memledger.tracer import intervals as iv


def _reference(pairs: list[tuple[int, int]]) -> P.Interval:
    out = P.empty()
    for s, e in pairs:
        if e > s:
            out = out | P.closedopen(s, e)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_spans_equals_portions_one_by_one_union(seed: int) -> None:
    rng = random.Random(seed)
    pairs = []
    for _ in range(rng.randint(0, 200)):
        s = rng.randint(0, 5000)
        pairs.append((s, s + rng.randint(-5, 300)))  # empty, touching and overlapping ones
    got = iv.spans(pairs)
    assert got == _reference(pairs)
    assert iv.length(got) == len({x for s, e in pairs for x in range(s, e)})


def test_touching_ranges_become_one() -> None:
    assert list(iv.spans([(10, 20), (0, 10), (20, 20), (25, 30)])) == [
        P.closedopen(0, 20), P.closedopen(25, 30)]
