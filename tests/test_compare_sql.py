"""compare counts in PostgreSQL (store/tally_pg.py) what it counts in Python on SQLite
(store/tally_rows.py): on one PostgreSQL store, the two give the same comparison, value
for value, in every mode.

The store is made to reach every branch: hosts with one to seven boots a side (medians of
odd and even counts, by small-count arithmetic and by sort), clones that share a machine
id, hosts with no name or an empty one, BIOS, efi=debug, kexec and truncated boots, a
leak, and releases that both selectors match. The Python side is itself checked against
what the kernels printed (tests/test_compare.py).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from capturegen import make_capture
from memledger.store.compare import Comparison, Thresholds, compare
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import prepare
from memledger.store.migrate import upgrade
from memledger.store.schema import boots, hosts, ledgers
from sqlalchemy import Engine, insert

pytestmark = pytest.mark.slow

FAR = datetime(9000, 1, 1, tzinfo=UTC)
T0 = datetime(2026, 11, 1, tzinfo=UTC)
SOURCES = {"6.1.0-47-amd64": ["6.1.0-47-amd64-default", "6.1.0-47-amd64-efidebug",
                              "6.1.0-47-amd64-seabios", "6.1.0-47-amd64-mem8g"],
           "6.12.117+deb12-amd64": ["6.12.117+deb12-amd64-default",
                                    "6.12.117+deb12-amd64-efidebug",
                                    "6.12.117+deb12-amd64-mem8g",
                                    "6.12.117+deb12-amd64-crashkernel"]}
FIGURE_KEYS = ("bs_total_bytes", "bs_reclaimed_bytes", "bs_kept_bytes", "bs_leaked_bytes",
               "low_freed_bytes", "anomaly_count")


def _linguistic_database(pg_server: Any, name: str) -> str:
    """A database whose text sorts as people read it (ICU, en-US: case and punctuation
    weigh less than letters), where Python's code point order is not the default."""
    with psycopg.connect(host="127.0.0.1", port=pg_server.port, user=pg_server.USER,
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
                     "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
    return f"postgresql+psycopg://{pg_server.USER}@127.0.0.1:{pg_server.port}/{name}"


@pytest.fixture(scope="module")
def pg_store(pg_server: Any) -> Engine:
    engine = make_engine(resolve_url(_linguistic_database(pg_server, "compare_sql")))
    upgrade(engine)
    rng = random.Random(20261205)
    templates = {src: prepare(make_capture(src, 0, i), "t", now=FAR)
                 for i, src in enumerate(s for group in SOURCES.values() for s in group)}
    host_rows, boot_rows, ledger_rows = [], [], []
    for h in range(60):
        clone = h % 13 == 7  # shares the machine id of the host before it
        host_rows.append({"id": h + 1, "machine_id": f"{(h if clone else h + 1):032x}",
                          "hostname": None if h % 17 == 3 else "" if h % 19 == 4
                          else f"{'Host' if h % 5 == 1 else 'host'}{'_' if h % 3 else '-'}"
                               f"{h // 2:03d}",  # two hosts a name (ties), and ICU's order

                          "first_seen": T0, "last_seen": T0, "sender": str(clone)})
        for release, srcs in SOURCES.items():
            for _ in range(rng.choice((0, 1, 1, 2, 3, 4, 5, 7))):
                p = templates[rng.choice(srcs)]
                pk = len(boot_rows) + 1
                when = T0 + timedelta(hours=pk)
                boot = {**p.boot, "id": pk, "host_id": h + 1, "boot_id": f"{pk:032x}",
                        "captured_at": when, "ingested_at": when, "kernel_release":
                        release if rng.random() < 0.8 else release.replace("-amd64", "-cloud-amd64")}
                if rng.random() < 0.05:
                    boot["kexec"] = True
                if rng.random() < 0.05:
                    boot["log_complete"] = False
                ledger = {k: v for k, v in p.ledger.items() if k != "document"}
                for key in FIGURE_KEYS:  # values of every size, and some unknown
                    if ledger[key] is not None and rng.random() < 0.7:
                        ledger[key] += rng.choice((0, 1, 4096, -4096, 3 << 20, -(5 << 20)))
                        ledger[key] = max(0, ledger[key])
                    if rng.random() < 0.03:
                        ledger[key] = None if key != "anomaly_count" else ledger[key]
                if h % 11 == 2 and release.startswith("6.12"):
                    ledger["bs_leaked_bytes"], ledger["anomaly_codes"] = 64 << 20, "leak"
                boot_rows.append(boot)
                ledger_rows.append({**ledger, "boot_pk": pk, "computed_at": when})
    with engine.begin() as conn:
        for table, rows in ((hosts, host_rows), (boots, boot_rows), (ledgers, ledger_rows)):
            conn.execute(insert(table), rows)
    return engine


def _answer(c: Comparison) -> dict[str, Any]:
    return {**c.as_dict(), "paired": c.paired, "left_out_whys": c.left_out_whys}


@pytest.mark.parametrize(("baseline", "candidate", "kw"), [
    ("6.1.*", "6.12.*", {}),
    ("6.1.*", "6.12.*", {"listed": 3}),
    ("6.1.*", "6.12.*", {"listed": 1000}),
    ("6.1.*", "6.12.*", {"include_all": True}),
    ("6.12.*", "6.1.*", {"thresholds": Thresholds(per_figure={"reclaimed": 1.0, "kept": 1e9})}),
    ("6.12.*", "6.1.*", {"thresholds": Thresholds(absolute=0, relative=0.0)}),
    ("6.*", "6.12.*", {}),  # 6.12 boots are on both sides
    ("6.1.0-47-amd64", "6.12.117+deb12-cloud-amd64", {"host_globs": ("host-01*",)}),
    ("6.1.*", "6.12.*", {"since": T0 + timedelta(hours=100), "until": T0 + timedelta(hours=300)}),
    ("6.1.*", "none", {}),
])
def test_postgresql_counts_what_python_counts(pg_store: Engine, baseline: str, candidate: str,
                                              kw: dict[str, Any]) -> None:
    in_sql = compare(pg_store, baseline, candidate, **kw)
    in_python = compare(pg_store, baseline, candidate, boots=True, **kw)
    assert in_python.sides  # the rows way (boots kept)
    assert _answer(in_sql) == _answer(in_python)
    if candidate != "none":
        assert in_sql.baseline["boots"] and in_sql.candidate["boots"]


def test_the_store_reaches_every_branch(pg_store: Engine) -> None:
    """The comparison above is worth something only if the store holds these cases."""
    c = compare(pg_store, "6.1.*", "6.12.*", boots=True)
    assert c.paired["hosts"] >= 30 and c.paired["worse"] and c.paired["better"]
    assert {"efi_debug", "not_efi", "kexec", "log_truncated"} <= {
        w for side in c.left_out_whys.values() for why in side for w in why}
    sizes = {len(s.by_host[h]) for s in c.sides.values() for h in s.by_host}
    assert {1, 2, 3, 4} <= sizes and max(sizes) > 4
    assert any(f["mode"] == "paired" for f in c.figures)
    assert "leak" in c.anomalies["candidate"]
    names = [p["hostname"] for p in c.pairs]
    assert None in names and "" in names and len(names) > len(set(names))


def test_p10_and_p90_are_nearest_rank_where_floating_point_is_not(pg_server: Any) -> None:
    """0.1 * 30 is 3.0000000000000004 in floating point: rank 3 is the p10 of 30 values."""
    engine = make_engine(resolve_url(str(pg_server.new_database())))
    upgrade(engine)
    p = prepare(make_capture("6.1.0-47-amd64-default", 0, 0), "t", now=FAR)
    with engine.begin() as conn:
        conn.execute(insert(hosts), [{"id": 1, "machine_id": "1" * 32, "hostname": "a",
                                      "first_seen": T0, "last_seen": T0}])
        conn.execute(insert(boots), [{**p.boot, "id": i, "host_id": 1, "boot_id": f"{i:032x}",
                                      "captured_at": T0, "ingested_at": T0,
                                      "kernel_release": "r30" if i <= 30 else "r70"}
                                     for i in range(1, 101)])
        conn.execute(insert(ledgers), [{**{k: v for k, v in p.ledger.items() if k != "document"},
                                        "boot_pk": i, "computed_at": T0,
                                        "bs_reclaimed_bytes": i << 20} for i in range(1, 101)])
    for c in (compare(engine, "r30", "r70"), compare(engine, "r30", "r70", boots=True)):
        rec = {f["name"]: f for f in c.figures}["reclaimed"]
        assert (rec["baseline"]["p10"], rec["baseline"]["p90"]) == (3 << 20, 27 << 20)
        assert (rec["candidate"]["p10"], rec["candidate"]["p90"]) == (37 << 20, 93 << 20)
