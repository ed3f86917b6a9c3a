"""Ledgers of real hosts' own boots, captured with ``memledger capture`` on the machine
itself (tests/fixtures/hosts): the kernel's printed figures and counters are the oracle."""

from __future__ import annotations

import re

from conftest import FIXTURES, analyze_json

LAZY = FIXTURES / "hosts" / "6.18.44-fc-deferred-lazy" / "root"


def test_lazy_deferred_init_is_explained_not_a_warning() -> None:
    """A 6.18 Firecracker guest with deferred_init=lazy: pages left to deferred_grow_zone()
    count in MemTotal and present but in no zone's managed until an allocation takes them,
    and no counter says how many are left. The residual they cause is explained (up to the
    pages the log printed), the leak is unknown (not a 20 GiB leak), and the JSON says why."""
    dmesg = (LAZY / "dmesg.txt").read_text()
    left = int(re.search(r"deferred_init=lazy: (\d+) pages left", dmesg).group(1)) * 4096  # type: ignore[union-attr]
    memtotal = int(re.search(r"^MemTotal:\s+(\d+) kB", (LAZY / "proc" / "meminfo").read_text(), re.M).group(1)) * 1024  # type: ignore[union-attr]
    managed = 4096 * sum(int(v) for v in re.findall(r"^\s+managed\s+(\d+)", (LAZY / "proc" / "zoneinfo").read_text(), re.M))
    waiting = memtotal - managed
    assert 0 < waiting <= left
    d = analyze_json(LAZY)
    acct = d["kernel_accounting"]
    assert acct["lazy_deferred_init"] is True
    assert acct["lazy_left_at_boot_bytes"] == left
    assert acct["residual_bytes"] == -waiting
    assert acct["lazy_uninitialised_bytes"] == waiting
    assert acct["unexplained_residual_bytes"] == 0
    assert [(a["code"], a["severity"]) for a in d["anomalies"]] == [("accounting_residual", "info")]
    assert "deferred_init=lazy" in d["anomalies"][0]["message"]
    assert d["firmware"]["efi"] is False
    assert d["efi_boot_services"]["leaked_bytes"] is None
