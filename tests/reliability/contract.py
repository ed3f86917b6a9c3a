"""The contract every malformed input is held to (issue 8), through the real CLI.

Either exit 2 with one line ``memledger: error: FILE[:LINE]: why``, or exit 0 with a
ledger per boot whose reclaimed bytes are the kernel's own printed figure or unknown
(null), never another number. No traceback, and the input is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from conftest import run_cli

__all__ = ("EXIT2", "analyze_contract", "fingerprint")

EXIT2 = "exit2"


def fingerprint(path: Path) -> str:
    """A digest of a file or a whole tree (names, modes and bytes), to prove it untouched."""
    h = hashlib.sha256()
    items = sorted(path.rglob("*")) if path.is_dir() else [path]
    for p in items:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def analyze_contract(path: Path, want: list[int | None] | str, codes: frozenset[str] = frozenset(),
                     ) -> list[dict[str, Any]]:
    """Run ``memledger analyze PATH --json`` and check the contract.

    ``want`` is EXIT2, or the reclaimed bytes each boot must show (None: unknown);
    ``codes`` are anomaly codes the last boot must carry. Returns the ledgers.
    """
    before = fingerprint(path)
    proc = run_cli("analyze", str(path), "--json")
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert fingerprint(path) == before, "the input was changed"
    if want == EXIT2:
        assert proc.returncode == 2, (proc.returncode, proc.stdout[:500], proc.stderr[-500:])
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and re.match(
            rf"memledger: error: {re.escape(str(path))}(:\d+)?: \S", lines[0]), lines
        return []
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    ledgers: list[dict[str, Any]] = doc if isinstance(doc, list) else [doc]
    reclaimed = [d["efi_boot_services"]["reclaimed_bytes"] for d in ledgers]
    assert reclaimed == want, reclaimed
    got = {a["code"] for a in ledgers[-1]["anomalies"]}
    assert codes <= got, (sorted(codes - got), ledgers[-1]["anomalies"])
    return ledgers
