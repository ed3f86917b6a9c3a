"""``memledger compare`` at fleet size: a time window, host filters, the worst hosts first,
and a table and markdown that stay the same size however many hosts there are.

The stores hold real lab boots: each host's 6.1 and 6.12 boots are the rows ``prepare``
computed for the lab's captures (as bench/fleet.py fills its stores), so every figure is
one the kernel printed. The leaking hosts are real 6.1 boots with MemTotal 64 MiB above
what the zones manage (the deferred-page leak's signature, as tests/test_prometheus.py
builds it).
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from capturegen import BOOTS, make_capture
from conftest import run_cli
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import prepare
from memledger.store.migrate import upgrade
from memledger.store.schema import boots, hosts, ledger_documents, ledgers
from sqlalchemy import insert

OLD, NEW = "6.1.0-47-amd64", "6.12.117+deb12-amd64"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
FAR = datetime(9000, 1, 1, tzinfo=UTC)
GITHUB_COMMENT_MAX = 65_536


def _leaky_root(tmp: Path) -> Path:
    root = tmp / "leaky-root"
    if not root.exists():
        shutil.copytree(BOOTS / "6.12.117+deb12-amd64-default" / "root", root)
        meminfo = root / "proc/meminfo"
        text = meminfo.read_text()
        kib = int(re.search(r"MemTotal:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
        meminfo.write_text(re.sub(r"MemTotal:\s+\d+ kB", f"MemTotal:        {kib + 65536} kB",
                                  text, count=1))
    return root


def _fleet(tmp: Path, n_hosts: int, leaky: int = 3) -> str:
    """A store of ``n_hosts`` hosts, each with a 6.1 boot on day 0 and a 6.12 boot on day
    10; every tenth host booted efi=debug (left out of reclaim), each host has its own
    command line, and the ``leaky`` last hosts' 6.12 boots leak."""
    url = f"sqlite:///{tmp / f'fleet-{n_hosts}.db'}"
    engine = make_engine(resolve_url(url))
    upgrade(engine)
    templates = {key: prepare(make_capture(src, 0, i), "t", now=FAR)
                 for i, (key, src) in enumerate({
                     "old": "6.1.0-47-amd64-default", "old-debug": "6.1.0-47-amd64-efidebug",
                     "new": "6.12.117+deb12-amd64-default",
                     "new-debug": "6.12.117+deb12-amd64-efidebug",
                     "new-leaky": _leaky_root(tmp)}.items())}
    host_rows, boot_rows, ledger_rows, doc_rows = [], [], [], []
    for h in range(n_hosts):
        host_rows.append({"id": h + 1, "machine_id": f"{h + 1:032x}", "hostname": f"host-{h:05d}",
                          "first_seen": T0, "last_seen": T0})
        debug = "-debug" if h % 10 == 5 else ""
        for day, key in ((0, "old" + debug), (10, "new-leaky" if h >= n_hosts - leaky else "new" + debug)):
            p = templates[key]
            pk = len(boot_rows) + 1
            when = T0 + timedelta(days=day, minutes=h)
            boot_rows.append({**p.boot, "id": pk, "host_id": h + 1, "boot_id": f"{pk:032x}",
                              "cmdline": f"{p.boot['cmdline']} host={h}",
                              "captured_at": when, "ingested_at": when})
            ledger_rows.append({**{k: v for k, v in p.ledger.items() if k != "document"},
                                "boot_pk": pk, "computed_at": when})
            doc_rows.append({"boot_pk": pk, "document": p.ledger["document"]})
    with engine.begin() as conn:
        for table, rows in ((hosts, host_rows), (boots, boot_rows), (ledgers, ledger_rows),
                            (ledger_documents, doc_rows)):
            conn.execute(insert(table), rows)
    engine.dispose()
    return url


def _compare(url: str, *args: str, fmt: str = "json") -> tuple[int, str]:
    proc = run_cli("compare", "--db", url, "--baseline", OLD, "--candidate", NEW,
                   "--format", fmt, *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, proc.stdout


def test_the_worst_hosts_come_first_and_the_rest_is_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As wide as the table (pytest's environment says 80 columns, so its children think so).
    monkeypatch.setenv("COLUMNS", "200")
    url = _fleet(tmp_path, 40, leaky=3)
    code, out = _compare(url)
    d = json.loads(out)
    assert code == 1 and d["verdict"] == "regression"
    assert len(d["pairs"]) == 40                     # json keeps every host
    # The three leaking hosts first, each 64 MiB: what the test put in MemTotal.
    assert [p["hostname"] for p in d["pairs"][:3]] == ["host-00037", "host-00038", "host-00039"]
    assert {p["figures"]["leaked"]["candidate"] for p in d["pairs"][:3]} == {64 << 20}
    rest = [p["figures"].get("leaked") for p in d["pairs"][3:]]
    assert [v["delta"] for v in rest if v] == [0] * 33   # efi=debug hosts measure no leak
    assert rest.count(None) == 4
    _, table = _compare(url, "--worst", "5", fmt="table")
    assert "the worst 5 of 40 paired hosts" in table
    listed = re.findall(r"^\s*(host-\d+)\s", table, re.M)
    assert listed[:3] == ["host-00037", "host-00038", "host-00039"] and len(listed) == 5
    assert "… and 35 more paired hosts: 0 worse in some figure" in table
    # Left out: the efi=debug boots, 4 a side, counted by reason rather than listed.
    assert re.search(r"left out \(baseline\): 4 boots, of some figures: efi=debug keeps", table)
    assert "host-00005 boot" not in table
    _, everything = _compare(url, "--worst", "all", fmt="table")
    assert len(re.findall(r"^\s*host-\d+\s", everything, re.M)) == 40
    assert "host-00005 boot" in everything


@pytest.mark.parametrize("n_hosts", [400, 4000])
def test_the_markdown_fits_a_pull_request_comment_at_any_fleet_size(
        tmp_path: Path, n_hosts: int) -> None:
    url = _fleet(tmp_path, n_hosts)
    code, md = _compare(url, fmt="markdown")
    assert code == 1
    assert len(md) < GITHUB_COMMENT_MAX
    assert f"The worst 10 of {n_hosts} paired hosts" in md
    assert len(re.findall(r"^\| host-\d+ \|", md, re.M)) == 10
    # 4 000 distinct command lines a side: ten of each, and the rest counted.
    assert f"and {n_hosts - 10} more" in md
    # The same lines at 400 and at 4 000 hosts: only numbers grow.
    assert len(md.splitlines()) < 60


def test_since_until_and_host_filters(tmp_path: Path) -> None:
    url = _fleet(tmp_path, 30)
    day5 = (T0 + timedelta(days=5)).date().isoformat()
    # The 6.1 boots were captured on day 0, the 6.12 ones on day 10.
    proc = run_cli("compare", "--db", url, "--baseline", OLD, "--candidate", NEW, "--since", day5)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"memledger: error: no stored boots match '{OLD}' with --since {day5} "
                                   f"in {url}")
    proc = run_cli("compare", "--db", url, "--baseline", NEW, "--candidate", NEW,
                   "--since", day5, "--until", "2026-11-11T00:10Z", "--format", "json")
    d: dict[str, Any] = json.loads(proc.stdout)
    assert (d["baseline"]["boots"], d["baseline"]["since"], d["baseline"]["until"]) == \
        (10, f"{day5}T00:00:00Z", "2026-11-11T00:10:00Z")   # hosts 0-9: minutes 0-9
    _, out = _compare(url, "--host", "host-0001*", "--host", f"{3:032x}")
    d = json.loads(out)
    assert sorted(p["hostname"] for p in d["pairs"]) == \
        ["host-00002", *(f"host-{n:05d}" for n in range(10, 20))]
    assert d["candidate"]["hosts"] == 11
    assert d["candidate"]["host_globs"] == ["host-0001*", f"{3:032x}"]


@pytest.mark.parametrize(("args", "why"), [
    (["--since", "last week"], "--since 'last week': expected a date or time (2026-11-30, "
                               "2026-11-30T12:00Z) or a duration before now (30d, 12h)"),
    (["--worst", "0"], "--worst '0': expected a number of hosts (1 or more) or all"),
])
def test_bad_window_or_worst_is_one_line_exit_2(tmp_path: Path, args: list[str], why: str) -> None:
    url = _fleet(tmp_path, 2)
    proc = run_cli("compare", "--db", url, "--baseline", OLD, "--candidate", NEW, *args)
    assert proc.returncode == 2 and proc.stderr.strip() == f"memledger: error: {why}"
