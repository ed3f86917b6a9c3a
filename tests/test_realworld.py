"""Every log of the real-world corpus (tests/realworld.py) is read, split into its boots and
figured as its own lines say; nothing in a format docs/analyze.md lists is refused."""

from __future__ import annotations

import collections
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from memledger.cli.inputs import InputError, load
from memledger.ledger.compute import compute_ledger
from realworld import READ_FORMATS, README, Entry, check_boot, corpus_dir, lines_of, manifest

ENTRIES = manifest()
_RESULTS: dict[str, list[dict[str, Any]] | str] = {}


@pytest.fixture(scope="module")
def corpus() -> Path:
    where = corpus_dir()
    if not where.is_dir():
        pytest.skip(f"the real-world logs are not at {where}: set MEMLEDGER_REALWORLD, or "
                    "write them with `python tests/realworld.py gather`")
    return where


def _analyze(corpus: Path, e: Entry) -> list[dict[str, Any]] | str:
    """The ledgers of every boot in the log, or the one-line refusal."""
    if e.file not in _RESULTS:
        try:
            _RESULTS[e.file] = [compute_ledger(ev).as_dict() for ev in load(str(corpus / e.file))]
        except InputError as exc:
            _RESULTS[e.file] = str(exc)
    return _RESULTS[e.file]


def test_the_manifest_names_each_log_once_with_its_provenance() -> None:
    assert len(ENTRIES) >= 300
    for key in ("file", "sha256", "blob"):
        values = [getattr(e, key) for e in ENTRIES]
        assert len(set(values)) == len(values), key
    for e in ENTRIES:
        assert re.fullmatch(r"[0-9a-f]{40}", e.commit) and re.fullmatch(r"[0-9a-f]{40}", e.blob)
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", e.repo) and e.path and e.bytes > 0
    formats = collections.Counter(e.format for e in ENTRIES)
    # Every form a fleet keeps is there: plain dmesg, -T, caller ids, syslog, ISO syslog,
    # journalctl's monotonic form.
    for fmt in ("dmesg", "dmesg-ctime", "dmesg-caller", "syslog", "syslog-iso", "journal"):
        assert formats[fmt] >= 1, fmt


def test_every_log_is_there_whole(corpus: Path) -> None:
    wrong = [e.file for e in ENTRIES if not (corpus / e.file).is_file()
             or hashlib.sha256((corpus / e.file).read_bytes()).hexdigest() != e.sha256]
    assert not wrong


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_a_real_log(entry: Entry, corpus: Path) -> None:
    out = _analyze(corpus, entry)
    if isinstance(out, str):
        assert entry.format not in READ_FORMATS, out
        assert " read as " in out or "(expected " in out, out  # the refusal names the format
        return
    if entry.format not in READ_FORMATS:
        return  # a vendor's format: read as far as it goes, never checked against its lines
    assert {led["fidelity"]["log_format"] for led in out} == {entry.format}
    lines = lines_of((corpus / entry.file).read_bytes())
    problems = [p for i, led in enumerate(out) for p in check_boot(lines, led, i == 0)]
    assert not problems


def counts(corpus: Path) -> str:
    """docs/analyze.md's table of the corpus: logs, boots, formats, refusals by reason."""
    logs: collections.Counter[str] = collections.Counter()
    boots: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    for e in ENTRIES:
        out = _analyze(corpus, e)
        logs[e.format] += 1
        if isinstance(out, str):
            refused[re.sub(r"\d+", "N", out.split(": ", 1)[1])] += 1
        else:
            boots[e.format] += len(out)
    rows = [f"| {fmt} | {logs[fmt]} | {boots[fmt]} |" for fmt in sorted(logs)]
    rows.append(f"| all | {sum(logs.values())} | {sum(boots.values())} |")
    refusals = [f"| {why} | {n} |" for why, n in sorted(refused.items())] or ["| none | 0 |"]
    eras = collections.Counter(_era(e.kernel) for e in ENTRIES)
    firmware = collections.Counter({True: "EFI", False: "BIOS", None: "not shown"}[e.efi]
                                   for e in ENTRIES)
    return "\n".join([
        "| format | logs | boots |", "|---|---|---|", *rows, "",
        "| kernel | " + " | ".join(sorted(eras, key=_era_key)) + " |",
        "|---|" + "---|" * len(eras),
        "| logs | " + " | ".join(str(eras[k]) for k in sorted(eras, key=_era_key)) + " |", "",
        "| firmware (first boot) | EFI | BIOS | not shown |", "|---|---|---|---|",
        f"| logs | {firmware['EFI']} | {firmware['BIOS']} | {firmware['not shown']} |", "",
        "| refused, why | logs |", "|---|---|", *refusals])


def _era(release: str | None) -> str:
    """"5.10.0-32-amd64" → "5.x"; None (the banner not in the log) → "not shown"."""
    m = re.match(r"(\d+)\.", release or "")
    return f"{m.group(1)}.x" if m else "not shown"


def _era_key(era: str) -> tuple[int, str]:
    return (int(era.split(".")[0]) if era[0].isdigit() else 99, era)


def test_the_readme_counts_are_the_corpus(corpus: Path) -> None:
    table = counts(corpus)
    assert table in README.read_text(), "docs/analyze.md's real-world table should read:\n" + table
