"""tracer/untrusted.py: the checks every string and JSON document from a spool file passes."""

from __future__ import annotations

import json

import pytest
from memledger.tracer.untrusted import (
    MAX_JSON_DEPTH,
    UntrustedError,
    check_text,
    load_json,
    parse_time,
    printable,
    scrub,
)


def test_depth_counts_brackets_outside_strings_only() -> None:
    # Brackets inside strings (escaped quotes included) are text, not nesting.
    doc = {"cmdline": "[" * 500 + '\\"[[[' + "{" * 500, "list": [[1]]}
    assert load_json(json.dumps(doc).encode(), "x") == doc
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert load_json(ok.encode(), "x") == json.loads(ok)
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(UntrustedError, match=f"^x nests deeper than {MAX_JSON_DEPTH} levels$"):
        load_json(deep.encode(), "x")
    with pytest.raises(UntrustedError, match=r"^x nests deeper"):
        load_json(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "x")


@pytest.mark.parametrize(("value", "controls", "why"), [
    ("web\ud800", False, "holds the character \\\\ud800"),
    ("web\udfff", True, "holds the character \\\\udfff"),
    ("a\x00b", True, "holds the character \\\\x00"),
    ("a\nb", False, "holds the character \\\\n"),
    ("x" * 65, False, "is 65 characters, over the 64 a kernel can produce"),
])
def test_text_that_cannot_be_stored_is_named(value: str, controls: bool, why: str) -> None:
    with pytest.raises(UntrustedError, match=why):
        check_text(value, "name", 64, controls=controls)


def test_text_that_can_be_stored_passes() -> None:
    assert check_text("root=/dev/sda1\tquiet", "cmdline", 64, controls=True) == \
        "root=/dev/sda1\tquiet"
    assert check_text("x" * 64, "name", 64) == "x" * 64
    assert scrub("a\x00b\ud800c") == "a\ufffdb\ufffdc"
    assert printable("evil\nERROR forged") == "evil\\nERROR forged"
    assert printable("café.tar.gz") == "café.tar.gz"
    assert printable("x" * 300, 10) == "x" * 10 + "…"


@pytest.mark.parametrize(("text", "why"), [
    ("0001-01-01T00:00:00+23:59", "is out of range in UTC"),
    ("9999-12-31T23:59:59-23:59", "is out of range in UTC"),
    ("2026-11-30T10:00:00", "has no time zone"),
    ("yesterday", "is not an ISO 8601 time"),
])
def test_times_a_datetime_cannot_hold_are_refused(text: str, why: str) -> None:
    with pytest.raises(UntrustedError, match=why):
        parse_time(text, "written_at")


def test_times_are_read_in_utc() -> None:
    assert parse_time("2026-11-30T10:00:00+02:00", "t").isoformat() == "2026-11-30T08:00:00+00:00"
    assert parse_time("2026-11-30T10:00:00.5Z", "t").isoformat() == "2026-11-30T10:00:00.500000+00:00"
