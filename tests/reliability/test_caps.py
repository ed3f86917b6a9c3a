"""Caps at every entry, bounded sums and deep trees (issue 28, items 2, 3 and 9).

At aed03d9 the release and command-line caps held for a capture's manifest but not for
its own ``proc/sys/kernel/osrelease`` and ``proc/cmdline`` (a 9 KB capture made 21 MB of
database), ``capture`` wrote files its own ``ingest`` refused, a DMI string SQLite took
failed on PostgreSQL's varchar(255), two batches of 2**51-byte events made SQLite's SUM
overflow at every scrape with nothing logged, and a capture 20 000 directories deep
ended ``ingest`` in a RecursionError that stored none of the good captures beside it.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from capturegen import BOOTS, boot_id, machine_id, make_capture
from click.testing import CliRunner
from conftest import run_cli
from contract import EXIT2, analyze_contract
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import BadCapture, ingest_bytes
from memledger.store.migrate import upgrade
from memledger.store.runtime import ingest_batch
from memledger.store.schema import boots, captures, events, hosts, runtime_batches, runtime_events
from memledger.tracer.caps import check_host_files
from memledger.tracer.capture import CaptureError, unpack
from memledger.tracer.runtime import BatchError, BatchHeader, RuntimeEvent, parse_batch, render_batch
from memledger.tracer.untrusted import UntrustedError
from sqlalchemy import Engine, func, select

FIXTURE = "6.12.117+deb12-amd64-default"
ROOT = BOOTS / FIXTURE / "root"
RELEASE = (ROOT / "proc/sys/kernel/osrelease").read_text().strip()


def _tree(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A copy of the fixture boot's root with ``files`` (relative paths) written over it."""
    root = tmp_path / "root"
    shutil.copytree(ROOT, root)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _engine(url: str) -> Engine:
    engine = make_engine(resolve_url(url))
    upgrade(engine)
    return engine


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# -- item 2: the same caps at every entry ---------------------------------------------

# What a kernel cannot have written: 4 MiB where it writes at most 64 or 34 816 bytes,
# and a DMI attribute longer than its sysfs page.
OVERSIZED = {
    "proc/sys/kernel/osrelease": b"6" * (4 << 20) + b"\n",
    "proc/cmdline": b"quiet " * ((4 << 20) // 6) + b"\n",
    "sys/class/dmi/id/product_name": b"P" * 5000 + b"\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("rel", sorted(OVERSIZED))
def test_capture_refuses_what_ingest_would_refuse(rel: str, tmp_path: Path) -> None:
    root = _tree(tmp_path, {rel: OVERSIZED[rel]})
    out = tmp_path / "out.tar.gz"
    proc = run_cli("capture", "--root", str(root), "-o", str(out), "--machine-id",
                   machine_id(1), "--boot-id", boot_id(1, 1))
    assert proc.returncode == 2, proc.stderr[-500:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and rel in lines[0] and "Traceback" not in proc.stderr, lines
    assert not out.exists()


@pytest.mark.slow
def test_a_release_one_over_the_uts_length_is_refused_by_capture(tmp_path: Path) -> None:
    """At aed03d9 capture wrote it and its own ingest refused the manifest."""
    root = _tree(tmp_path, {"proc/sys/kernel/osrelease": b"r" * 65 + b"\n"})
    out = tmp_path / "out.tar.gz"
    proc = run_cli("capture", "--root", str(root), "-o", str(out), "--machine-id",
                   machine_id(1), "--boot-id", boot_id(1, 1))
    assert proc.returncode == 2 and "osrelease" in proc.stderr and "65" in proc.stderr, proc.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("rel", sorted(OVERSIZED))
def test_ingest_refuses_a_capture_whose_own_file_is_over_its_cap(rel: str, tmp_path: Path,
                                                                 db_url: str) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(make_capture(_tree(tmp_path, {rel: OVERSIZED[rel]}), 1, 1))
    assert bad.stat().st_size < 64 << 10  # a small file that would make megabytes
    good = tmp_path / "good.tar.gz"
    good.write_bytes(make_capture(FIXTURE, 2, 1))
    analyze_contract(bad, EXIT2)
    proc = run_cli("ingest", "--db", db_url, str(bad), str(good))
    assert proc.returncode == 2, proc.stderr[-500:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("memledger: error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and rel in errors[0], errors
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(hosts.c.machine_id).join(boots)).scalars().all()
        assert stored == [machine_id(2)]
    finally:
        engine.dispose()


@pytest.mark.parametrize("length", [255, 300, 4095])
def test_a_long_dmi_product_name_is_stored_alike_on_both_backends(length: int, tmp_path: Path,
                                                                  db_url: str) -> None:
    """A DMI string is a sysfs page: PostgreSQL refused 300 characters at aed03d9."""
    name = "Q" * (length - 3) + "-V9"
    data = make_capture(_tree(tmp_path, {"sys/class/dmi/id/product_name": name.encode() + b"\n"}),
                        1, 1)
    engine = _engine(db_url)
    try:
        assert ingest_bytes(engine, data, "test").status == "new"
        with engine.connect() as conn:
            assert conn.execute(select(boots.c.product)).scalar_one() == name
    finally:
        engine.dispose()


def test_a_log_release_longer_than_a_kernel_writes_is_refused_before_the_database(
        tmp_path: Path, db_url: str) -> None:
    """No osrelease file: the release comes from the log's banner, held to the same cap."""
    log = (ROOT / "dmesg.txt").read_text().replace(f"Linux version {RELEASE}",
                                                   f"Linux version {'x' * 300}", 1)
    root = _tree(tmp_path, {"dmesg.txt": log.encode()})
    (root / "proc/sys/kernel/osrelease").unlink()
    engine = _engine(db_url)
    try:
        with pytest.raises(BadCapture, match=r"kernel_release .* 300 characters, over the 64"):
            ingest_bytes(engine, make_capture(root, 1, 1), "test")
        assert _count(engine, boots) == 0 and _count(engine, captures) == 0
    finally:
        engine.dispose()


def test_every_parse_cap_fits_its_column() -> None:
    """One place defines each cap: a value a parser accepts is one its column holds."""
    from memledger.tracer import caps

    width = {(t.name, c.name): c.type.length for t in (boots, hosts, captures, runtime_batches,
                                                        runtime_events) for c in t.c
             if getattr(c.type, "length", None)}
    assert width[("boots", "product")] >= caps.SYSFS_ATTR_MAX
    assert width[("boots", "firmware_version")] >= caps.SYSFS_ATTR_MAX
    assert width[("boots", "kernel_release")] >= caps.UTS_LEN
    assert width[("hosts", "hostname")] >= caps.DNS_NAME_MAX
    assert width[("captures", "memledger_version")] >= caps.VERSION_MAX
    assert width[("runtime_events", "function")] >= caps.KSYM_NAME_LEN
    assert width[("runtime_events", "caller")] >= caps.KSYM_NAME_LEN


def test_the_kernel_host_name_file_is_held_to_the_uts_length() -> None:
    with pytest.raises(UntrustedError, match="proc/sys/kernel/hostname is 65 bytes"):
        check_host_files({"proc/sys/kernel/hostname": b"h" * 65 + b"\n"})
    check_host_files({"proc/sys/kernel/hostname": b"h" * 64 + b"\n"})


# -- item 3: bounded arithmetic --------------------------------------------------------

def _header(dropped: int = 0) -> BatchHeader:
    return BatchHeader(machine_id(1), boot_id(1, 1), "bcc", "0.1.0",
                       datetime(2026, 11, 1, 1, tzinfo=UTC), "host-1", RELEASE, dropped)


def _freed(seq: int, size: int) -> RuntimeEvent:
    return RuntimeEvent(seq, 900.0 + seq, "freed", "online_pages", bytes=size)


@pytest.mark.parametrize(("field", "value"), [
    ("bytes", (1 << 52) + 1), ("bytes", 1 << 62), ("phys_start", 1 << 52),
    ("phys_end", (1 << 52) + 4096), ("phys_start", -4096)])
def test_a_figure_no_machine_can_hold_is_refused(field: str, value: int) -> None:
    event = RuntimeEvent(2, 1.0, "freed", "online_pages", **{field: value})  # type: ignore[arg-type]
    with pytest.raises(BatchError, match=rf"^line 2: {field} "):
        parse_batch(render_batch(_header(), [event]))


def test_a_dropped_count_no_machine_can_hold_is_refused() -> None:
    with pytest.raises(BatchError, match=r"^line 1: dropped "):
        parse_batch(render_batch(_header(dropped=1 << 62), []))


def test_the_largest_figures_a_machine_can_hold_are_accepted() -> None:
    top = RuntimeEvent(2, 1.0, "freed", "online_pages", 0, 1 << 52, 1 << 52)
    assert parse_batch(render_batch(_header(), [top])).events == (top,)


def test_sums_past_int64_do_not_break_the_scrape(db_url: str, caplog: pytest.LogCaptureFixture,
                                                 ) -> None:
    """Two batches of 4200 events of 2**51 bytes: 2**63.04 bytes in all."""
    from memledger.exporters.metrics import StoreCollector

    engine = _engine(db_url)
    try:
        ingest_bytes(engine, make_capture(FIXTURE, 1, 1), "test")
        for b in range(2):
            events = [_freed(b * 4200 + i, 1 << 51) for i in range(4200)]
            assert ingest_batch(engine, render_batch(_header(), events)).status == "new"
        with caplog.at_level(logging.WARNING):
            families = {m.name: m for m in StoreCollector(engine, machine_id(1)).collect()}
        assert [s.value for s in families["memledger_store_up"].samples] == [1]
        freed = {s.labels["function"]: s.value
                 for s in families["memledger_runtime_freed_bytes"].samples
                 if s.name.endswith("_total")}
        assert freed["online_pages"] == float(2 * 4200 * (1 << 51))
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        engine.dispose()


def test_a_scrape_that_cannot_read_the_store_says_why(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from memledger.exporters.metrics import StoreCollector

    db = tmp_path / "m.db"
    engine = _engine(f"sqlite:///{db}")
    try:
        ingest_bytes(engine, make_capture(FIXTURE, 1, 1), "test")
        with sqlite3.connect(db) as raw:  # a store a query fails on
            raw.execute("DROP TABLE runtime_events")
        collector = StoreCollector(engine, machine_id(1))
        with caplog.at_level(logging.INFO):
            for _ in range(3):  # three scrapes while it stays down: one line
                families = {m.name: m for m in collector.collect()}
                assert [s.value for s in families["memledger_store_up"].samples] == [0]
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "runtime_events" in lines[0] and "\n" not in lines[0], lines
    finally:
        engine.dispose()


# -- item 9: deep trees and one bad file among good ones ------------------------------

def _deep(levels: int) -> bytes:
    """The good capture plus one file ``levels`` directories deep."""
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(make_capture(FIXTURE, 3, 1)))) as src, \
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in src:
            fh = src.extractfile(m)
            tar.addfile(m, fh)
        info = tarfile.TarInfo("/".join(["d"] * levels) + "/f")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return gzip.compress(raw.getvalue(), mtime=0)


def test_a_capture_deeper_than_any_tree_is_refused_in_one_line() -> None:
    with pytest.raises(CaptureError, match=r"20001 levels deep, over the 64"):
        unpack(_deep(20_000))
    assert unpack(_deep(40)).tree.read("/".join(["d"] * 40) + "/f") == b"x"


@pytest.mark.slow
def test_ingest_stores_the_good_captures_beside_a_deep_one(tmp_path: Path, db_url: str) -> None:
    deep = tmp_path / "deep.tar.gz"
    deep.write_bytes(_deep(20_000))
    goods = []
    for host in (4, 5):
        goods.append(tmp_path / f"good-{host}.tar.gz")
        goods[-1].write_bytes(make_capture(FIXTURE, host, 1))
    analyze_contract(deep, EXIT2)
    proc = run_cli("ingest", "--db", db_url, str(goods[0]), str(deep), str(goods[1]))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("memledger: error:")]
    assert len(errors) == 1 and str(deep) in errors[0] and "levels deep" in errors[0], errors
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            stored = sorted(conn.execute(select(hosts.c.machine_id).join(boots)).scalars())
        assert stored == sorted([machine_id(4), machine_id(5)])
    finally:
        engine.dispose()


def test_any_parser_failure_is_isolated_to_its_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a parser raises on one file (here a KeyError no parser reports), the
    others are stored and the run exits 2 naming that file."""
    from memledger.cli import store as cli_store

    real = cli_store.prepare
    poison = make_capture(FIXTURE, 6, 1)

    def prepare(data: bytes, version: str) -> Any:
        if data == poison:
            raise KeyError("no such member")
        return real(data, version)

    monkeypatch.setattr(cli_store, "prepare", prepare)
    paths = [tmp_path / "a.tar.gz", tmp_path / "b.tar.gz", tmp_path / "c.tar.gz"]
    for path, data in zip(paths, (make_capture(FIXTURE, 7, 1), poison, make_capture(FIXTURE, 8, 1)),
                          strict=True):
        path.write_bytes(data)
    db = tmp_path / "m.db"
    result = CliRunner().invoke(cli_store.ingest, ["--db", f"sqlite:///{db}", "-j", "1",
                                                   *map(str, paths)])
    assert result.exit_code == 2, result.output
    assert f"{paths[1]}: cannot be parsed (KeyError" in result.output, result.output
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT count(*) FROM boots").fetchone() == (2,)


@pytest.mark.parametrize("length", [600, 2000])
def test_an_event_s_caller_is_stored_whole_or_refused_alike(length: int, tmp_path: Path,
                                                           db_url: str) -> None:
    """A memblock=debug line's caller, read from one kernel log line: at aed03d9 it was cut
    to 255 characters without a word. Up to a printk record (1024) it is stored whole on
    both backends; longer, no kernel printed it, and the capture is refused by name."""
    src = BOOTS / "6.1.0-47-amd64-memblock" / "root"
    log = (src / "dmesg.txt").read_text()
    old = "efi_memblock_x86_reserve_range+0x1fc/0x22a"
    caller = "s" * (length - len("+0x1fc/0x22a")) + "+0x1fc/0x22a"
    assert old in log
    root = tmp_path / "root"
    shutil.copytree(src, root)
    (root / "dmesg.txt").write_text(log.replace(old, caller, 1))
    data = make_capture(root, 3, 1)
    engine = _engine(db_url)
    try:
        if length > 1024:
            with pytest.raises(BadCapture, match=r"^caller 's+.*is 2000 characters, over the 1024"):
                ingest_bytes(engine, data, "test")
            assert _count(engine, boots) == 0
            return
        assert ingest_bytes(engine, data, "test").status == "new"
        with engine.connect() as conn:
            stored = conn.execute(select(events.c.caller)
                                  .where(events.c.caller.like("sss%"))).scalars().all()
        assert stored == [caller]
    finally:
        engine.dispose()
