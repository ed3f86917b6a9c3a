"""Two boots in one file, and formats a future kernel might print (issue 8).

The oracle is the kernel's own "efi: Freeing EFI boot services memory" figure of each
boot. For a changed format the totals must also stay what the unchanged log gives: a
parser that silently drops the changed lines would change them.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import kernel_efi_freed_bytes, run_cli
from contract import EXIT2, analyze_contract

BOOTS = Path(__file__).parents[1] / "fixtures" / "boots"


def _log(name: str) -> str:
    return (BOOTS / name / "root" / "dmesg.txt").read_text()


A, B = _log("6.1.0-56-amd64-default"), _log("6.12.117+deb12-cloud-amd64-default")
MB = _log("6.12.117+deb12-amd64-memblock")
EFIDEBUG = _log("6.12.117+deb12-amd64-efidebug")
FA, FB, FMB = (kernel_efi_freed_bytes(t) for t in (A, B, MB))


def _cut_before_free(text: str) -> str:
    return text[:text.index("efi: Freeing EFI boot services")].rsplit("\n", 1)[0] + "\n"


def _after_range(text: str, extra: str) -> str:
    """``extra`` inserted after every memblock range, where v6.16 put " nid=… flags=…"."""
    return re.sub(r"(\] _{0,2}memblock_\w+: \[0x[0-9a-f]+-0x[0-9a-f]+\])", rf"\1{extra}", text)


# name -> (text, reclaimed per boot or EXIT2, anomaly codes the last boot must carry)
TWO_BOOTS: dict[str, tuple[Callable[[], str], list[int | None], frozenset[str]]] = {
    "two different kernels back to back": (lambda: A + B, [FA, FB], frozenset()),
    # A console's replay of the ring buffer: one boot (logformat._is_replay).
    "the same boot twice (a replay): one boot": (lambda: B + B, [FB], frozenset()),
    "the first boot cut before its free": (lambda: _cut_before_free(A) + B, [None, FB], frozenset()),
    "the second boot cut before its free": (lambda: A + _cut_before_free(B), [FA, None],
                                            frozenset({"log_truncated", "reclaim_unknown"})),
    "a wrapped first boot, then a whole one": (lambda: A[len(A) // 2:] + B, [FA, FB], frozenset()),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TWO_BOOTS))
def test_two_boots_in_one_file(case: str, tmp_path: Path) -> None:
    make, want, codes = TWO_BOOTS[case]
    assert None not in (FA, FB)
    path = tmp_path / "kern.log"
    path.write_text(make())
    ledgers = analyze_contract(path, want, codes)
    releases = [d["kernel"]["release"] for d in ledgers]
    if case == "two different kernels back to back":
        assert releases == ["6.1.0-56-amd64", "6.12.117+deb12-cloud-amd64"]


def _extra_efi_column(ln: str) -> str:
    # A 16th attribute field, as ba69e0750b03 added the 15th ("HP" after "RUN").
    return ln.replace("|   |WB|WT|WC|UC]", "|   |XP|WB|WT|WC|UC]") if "efi: mem" in ln else ln


def _unknown_efi_attr(ln: str) -> str:
    return re.sub(r"\|WB\|WT\|WC\|UC\]", "|attr=0x0000000000400000]", ln) if "efi: mem" in ln else ln


# Changed formats whose totals must equal the unchanged log's:
# name -> (original, changed text, reclaimed, codes)
VARIANTS: dict[str, tuple[str, Callable[[], str], int | None, frozenset[str]]] = {
    "an extra EFI attribute column": (
        EFIDEBUG, lambda: "".join(map(_extra_efi_column, EFIDEBUG.splitlines(keepends=True))),
        0, frozenset({"efi_debug_set"})),
    "an unknown EFI attribute bit (attr=0x…)": (
        EFIDEBUG, lambda: "".join(map(_unknown_efi_attr, EFIDEBUG.splitlines(keepends=True))),
        0, frozenset({"efi_debug_set"})),
    "memblock nid/flags fields (v6.16) with an unknown flag bit": (
        MB, lambda: _after_range(MB, " nid=-1 flags=400"), FMB, frozenset()),
    "a new key after the memblock range": (
        MB, lambda: _after_range(MB, " nid=0 flags=0 zone=DMA32"), FMB, frozenset()),
    "a memblock line with two unknown words: named, not dropped": (
        MB, lambda: MB.replace("efi_memattr_init+0x4f/0xa0", "efi_memattr_init+0x4f/0xa0 what now",
                               1), FMB, frozenset({"bad_input"})),
}


def _totals(doc: dict) -> tuple[object, ...]:
    bs = doc["efi_boot_services"]
    return (bs["total_bytes"], bs["regions"], bs["cross_checks"]["efi_memmap_bytes"],
            bs["cross_checks"]["memblock_reserved_bytes"], doc["low_memory"])


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_future_format_variant(case: str, tmp_path: Path) -> None:
    original, make, reclaimed, codes = VARIANTS[case]
    changed = make()
    assert changed != original  # the variant really is in the text
    (tmp_path / "orig.log").write_text(original)
    path = tmp_path / "kern.log"
    path.write_text(changed)
    ledgers = analyze_contract(path, [reclaimed], codes)
    base = json.loads(run_cli("analyze", str(tmp_path / "orig.log"), "--json").stdout)
    assert _totals(ledgers[-1]) == _totals(base)
    assert _totals(base)[0]  # a total to compare


def _root_with_debugfs(tmp_path: Path, reserved: str) -> Path:
    root = tmp_path / "root"
    shutil.copytree(BOOTS / "6.12.117+deb12-amd64-memblock" / "root", root)
    d = root / "sys" / "kernel" / "debug" / "memblock"
    d.mkdir(parents=True)
    (d / "memory").write_text("   0: 0x0000000000001000..0x000000000009efff    0 NONE\n"
                              "   1: 0x0000000000100000..0x000000007fffffff    0 NONE\n")
    (d / "reserved").write_text(reserved)
    return root


def test_an_unknown_memblock_flag_in_debugfs(tmp_path: Path) -> None:
    root = _root_with_debugfs(tmp_path, (
        "   0: 0x0000000000000000..0x00000000000fffff    0 NONE\n"
        "   1: 0x0000000001000000..0x0000000001ffffff    0 MEMBLOCK_RSRV_KERN\n"
        "   2: 0x0000000002000000..0x0000000002ffffff    0 MEMBLOCK_KHO_FUTURE_FLAG\n"))
    ledgers = analyze_contract(root, [FMB])
    assert ledgers[-1]["fidelity"]["sources"]["memblock_debugfs"] is True


def test_a_broken_debugfs_line_is_named_not_fatal(tmp_path: Path) -> None:
    root = _root_with_debugfs(tmp_path, "   0: 0x0000000000000000..0x00000000000fffff    0 NONE\n"
                                        "garbage here\n")
    ledgers = analyze_contract(root, [FMB], frozenset({"bad_input"}))
    msgs = [a["message"] for a in ledgers[-1]["anomalies"] if a["code"] == "bad_input"]
    assert any("line 2" in m for m in msgs), msgs


EXIT2_CASES = {
    "a UTF-16 log (binary to a UTF-8 reader)": lambda: B.encode("utf-16"),
    "a log that is one long line of NULs": lambda: b"\0" * 100_000,
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(EXIT2_CASES))
def test_unreadable_text_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    path = tmp_path / "kern.log"
    path.write_bytes(EXIT2_CASES[case]())
    analyze_contract(path, EXIT2)
