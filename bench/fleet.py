"""A fleet-sized store for the compare and scrape benchmarks: 100 000 boots.

Ingesting 100 000 captures would take most of an hour and store 2 GB of capture files
that neither ``compare`` nor the fleet metrics read. Instead the store is made by
memledger's own migrations and then filled with bulk inserts of real rows: the boot
columns and ledger (headline columns and the whole JSON document) that ``prepare``
computes for each real lab boot, repeated over 25 000 hosts and about 60 kernel releases
(each keeping its source's major.minor, as :mod:`bench.corpus` does). Boots have no
stored capture (``capture_id`` is NULL), as after a capture is pruned.

The figures of every boot are known here, so what ``compare`` must answer for a selector
(boots and median per figure) is computed independently, with :mod:`statistics`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
import statistics
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from memledger.ledger.measures import measures, reasons
from memledger.store.compare import FIGURES
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import prepare
from memledger.store.migrate import upgrade
from memledger.store.schema import boots, hosts, ledger_documents, ledgers
from sqlalchemy import insert

from bench.captures import source_captures
from bench.corpus import load_sources, release_variant

__all__ = ("Fleet", "expected_side", "populate")

T0 = datetime(2026, 6, 1, tzinfo=UTC)
CHUNK = 5000
FAR = datetime(9000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Fleet:
    boots: int
    hosts: int
    releases: dict[str, int]            # release → boots
    values: list[tuple[str, dict[str, Any]]]  # (release, ledger columns and "why") per boot


def _templates(work: Path) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(boot columns, ledger row) of each real source boot, by name."""
    out = {}
    for name, path in source_captures(work, set(load_sources())).items():
        # The corpus captures are dated by their index (years ahead of the clock for the
        # later ones), which a store refuses from a real writer: judge them by a far date.
        p = prepare(path.read_bytes(), "bench", now=FAR)
        out[name] = (p.boot, p.ledger)
    return out


def populate(url: str, work: Path, seed: int, n: int = 100_000, per_host: int = 4,
             documents: bool = True) -> Fleet:
    """Create the store at ``url`` (empty) and fill it with ``n`` boots; their ledger
    documents too (3 to 4 KB each) unless ``documents`` is False, as for a store compare
    alone reads."""
    engine = make_engine(resolve_url(url))
    upgrade(engine)
    templates = _templates(work)
    names = sorted(templates)
    rng = random.Random(seed)
    # A pool of releases per source kernel, so that each release has many boots.
    pool = {name: [release_variant(random.Random(f"{seed}-{name}-{k}"), templates[name][0]["kernel_release"])
                   for k in range(3)] for name in names}
    values: list[tuple[str, dict[str, Any]]] = []
    releases: dict[str, int] = {}
    n_hosts = -(-n // per_host)
    with engine.begin() as conn:
        for start in range(0, n_hosts, CHUNK):
            conn.execute(insert(hosts), [
                {"id": h + 1, "machine_id": hashlib.md5(f"fleet-host-{h}".encode()).hexdigest(),
                 "hostname": f"fleet-{h:05d}", "first_seen": T0, "last_seen": T0}
                for h in range(start, min(start + CHUNK, n_hosts))])
        for start in range(0, n, CHUNK):
            boot_rows: list[dict[str, Any]] = []
            ledger_rows: list[dict[str, Any]] = []
            doc_rows: list[dict[str, Any]] = []
            for i in range(start, min(start + CHUNK, n)):
                name = rng.choice(names)
                boot, ledger = templates[name]
                release = rng.choice(pool[name])
                releases[release] = releases.get(release, 0) + 1
                when = T0 + timedelta(minutes=i)
                boot_rows.append({**boot, "id": i + 1, "host_id": i // per_host + 1,
                                  "boot_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                                  "kernel_release": release, "captured_at": when,
                                  "ingested_at": when})
                ledger_rows.append({**{k: v for k, v in ledger.items() if k != "document"},
                                    "boot_pk": i + 1, "computed_at": when})
                doc_rows.append({"boot_pk": i + 1, "document": ledger["document"]})
                why = reasons(boot["efi"], boot["efi_debug"], boot["kexec"], boot["log_complete"])
                values.append((release, {**{f.key: ledger[f.key] for f in FIGURES}, "why": why}))
            conn.execute(insert(boots), boot_rows)
            conn.execute(insert(ledgers), ledger_rows)
            if documents:
                conn.execute(insert(ledger_documents), doc_rows)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # ids were given explicitly: move the sequences on
            for table in ("hosts", "boots"):
                conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                     f"(SELECT max(id) FROM {table}))")
        # As a store that has been up a while: statistics and visibility map current, and
        # the fill's dirty pages written, so that no checkpoint runs during a measurement.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
            conn.exec_driver_sql("CHECKPOINT")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return Fleet(n, n_hosts, releases, values)


def expected_side(fleet: Fleet, selector: str) -> dict[str, tuple[int, float | None]]:
    """(boots where known, median) of every figure over the boots ``selector`` matches
    that measure it (ledger/measures.py's rules, applied to the boot columns written)."""
    out = {}
    matching = {r for r in fleet.releases if fnmatch.fnmatchcase(r, selector)}
    values = [v for r, v in fleet.values if r in matching]
    for f in FIGURES:
        known = [v[f.key] for v in values if v[f.key] is not None and measures(f.name, v["why"])]
        out[f.name] = (len(known), statistics.median(known) if known else None)
    return out
