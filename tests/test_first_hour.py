"""What a newcomer meets first: ingest, boots and the store, refusing what cannot work.

The boots are real lab boots (tests/fixtures/boots); every expected value is read from the
kernel's own files in them (osrelease, DMI, meminfo, zoneinfo), not from memledger.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import lxml.html
import pytest
from capturegen import machine_id, make_capture
from click.testing import CliRunner, Result
from conftest import FIXTURES
from memledger.cli.main import main
from memledger.exporters.daemon import boot_facts
from memledger.store.db import make_engine, resolve_url
from memledger.store.migrate import upgrade
from memledger.store.queries import latest_boots

BOOTS = FIXTURES / "boots"
EFI_BOOT = "6.12.117+deb12-cloud-amd64-default"  # the longest release among the fixtures
BIOS_BOOT = "6.12.117+deb12-cloud-amd64-seabios"


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _osrelease(name: str) -> str:
    return (BOOTS / name / "root/proc/sys/kernel/osrelease").read_text().strip()


def _captures(tmp: Path, *names: str) -> Path:
    d = tmp / "captures"
    d.mkdir()
    for i, name in enumerate(names):
        (d / f"{name}.tar.gz").write_bytes(make_capture(name, i, 0, minutes=i))
    return d


def test_an_ingest_with_nothing_to_ingest_is_refused_and_makes_no_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a capture\n")
    db = tmp_path / "m.db"
    result = _run("ingest", "--db", str(db), str(empty))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and str(empty) in result.stderr
    assert "nothing to ingest" in result.stderr
    assert not db.exists()


def test_a_failed_first_ingest_leaves_no_empty_database(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    db = tmp_path / "m.db"
    result = _run("ingest", "--db", str(db), str(bad))
    assert result.exit_code == 2 and "broken.tar.gz" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no .db, -wal or -shm

    # With one good capture beside the bad one, the store stays: nothing is lost.
    (bad / "good.tar.gz").write_bytes(make_capture(EFI_BOOT, 0, 0))
    result = _run("ingest", "--db", str(db), str(bad))
    assert result.exit_code == 2 and "1 new" in result.stderr
    assert db.exists()


def test_an_unsupported_database_is_named_in_one_line(tmp_path: Path) -> None:
    result = _run("boots", "--db", "mysql://memledger@db/memledger")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "memledger: error: mysql://memledger@db/memledger: memledger stores in SQLite (a file, "
        "or sqlite:///PATH) or PostgreSQL (postgresql+psycopg://…), not mysql")
    result = _run("boots", "--db", "postgresql+psycopg2://memledger@db/memledger")
    assert result.exit_code == 2 and "postgresql+psycopg://" in result.stderr
    assert "psycopg2" in result.stderr  # the driver this URL asked for


def test_capture_into_a_missing_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "no-such-spool"
    result = _run("capture", "--root", str(BOOTS / EFI_BOOT / "root"), "--machine-id", machine_id(0),
                  "-o", f"{out}/")
    assert result.exit_code == 2 and "no such directory" in result.stderr
    assert not out.exists()


def test_boots_shows_the_whole_release_the_firmware_and_says_not_efi(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert _run("ingest", "--db", str(db), str(_captures(tmp_path, EFI_BOOT, BIOS_BOOT))).exit_code == 0
    release = _osrelease(EFI_BOOT)
    dmi = BOOTS / EFI_BOOT / "root/sys/class/dmi/id"
    bios_version = (dmi / "bios_version").read_text().strip()
    assert (dmi / "bios_vendor").read_text().strip() == "EFI Development Kit II / OVMF"

    table = _run("boots", "--db", str(db))
    assert table.exit_code == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if "host-" in line}
    efi_row, bios_row = rows["host-0"], rows["host-1"]
    assert release in efi_row.split() and release in bios_row.split()  # never cut
    assert f"EFI EDK II {bios_version}" in efi_row  # one vendor name for OVMF's two spellings
    assert "not EFI" in bios_row and "?" not in bios_row
    # The BIOS boot's boot-services cells say "does not apply", not unknown.
    assert bios_row.split()[-5:-2] == ["-", "-", "-"]

    listed = {r["hostname"]: r for r in json.loads(_run("boots", "--db", str(db), "--json").stdout)}
    assert listed["host-1"]["efi"] is False
    assert listed["host-1"]["notes"] == [
        "not EFI: a BIOS boot has no EFI boot services; those figures do not apply"]
    assert listed["host-1"]["efi_boot_services"]["reclaimed_bytes"] is None
    assert listed["host-0"]["notes"] == [] and listed["host-0"]["kernel_release"] == release


def _kernel_leak_bytes(root: Path) -> int:
    """MemTotal - Σ zone managed pages, read with this test's own patterns."""
    memtotal = int(re.search(r"^MemTotal:\s+(\d+) kB", (root / "proc/meminfo").read_text(), re.M)[1])
    managed = sum(int(n) for n in re.findall(r"^\s+managed\s+(\d+)", (root / "proc/zoneinfo").read_text(), re.M))
    return memtotal * 1024 - managed * 4096


def test_the_landing_page_summary_of_the_current_boot(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    d = _captures(tmp_path, "5.10.0-32-amd64-default", BIOS_BOOT)
    for name in sorted(os.listdir(d)):  # one at a time: the BIOS boot is stored last
        assert _run("ingest", "--db", str(db), str(d / name)).exit_code == 0
    engine = make_engine(resolve_url(str(db)), create=False)
    with engine.connect() as conn:
        bios = latest_boots(conn, None, 1)[0]  # of the host whose boot was stored last
        efi = latest_boots(conn, machine_id(0), 1)[0]
    engine.dispose()

    facts = boot_facts(bios)
    assert facts["firmware"] == "not EFI (BIOS)"
    assert facts["note"] == "not EFI: a BIOS boot has no EFI boot services; those figures do not apply"
    assert "EFI boot services" not in facts
    assert f"kernel {_osrelease(BIOS_BOOT)}" in facts["current boot"]

    facts = boot_facts(efi)
    leak = _kernel_leak_bytes(BOOTS / "5.10.0-32-amd64-default" / "root")
    assert leak > 0  # 5.10 leaks on a 2 GiB guest: memblock_free_late skips deferred pages
    assert facts["firmware"].startswith("EFI, EDK II") and "note" not in facts
    assert f"leaked {leak / (1 << 20):,.1f} MiB" in facts["EFI boot services"]
    # 5.10 prints no "Freeing EFI boot services memory" line and this boot had no
    # memblock=debug: the reclaim is unknown, and said so.
    assert "reclaimed unknown" in facts["EFI boot services"]



def test_a_bios_boot_s_table_says_does_not_apply_not_unknown() -> None:
    result = _run("analyze", str(BOOTS / BIOS_BOOT / "root"))
    assert result.exit_code == 0, result.stderr
    lines = [" ".join(line.strip("│ ").split()) for line in result.stdout.splitlines()]
    assert "not an EFI boot does not apply BIOS: no boot services" in lines
    assert "boot services does not apply BIOS" in lines  # below 1 MiB
    assert not any("unknown" in line for line in lines if "boot services" in line)


def test_a_document_stored_by_an_older_memledger_is_read_with_its_new_keys_unknown(
        tmp_path: Path) -> None:
    """Documents stored before boot_params, kdump, kexec and the vendor name were in the
    ledger lack those keys: a scrape still describes the boot, and they read as unknown."""
    from memledger.exporters.metrics import StoreCollector
    from memledger.store.schema import ledger_documents

    db = tmp_path / "m.db"
    assert _run("ingest", "--db", str(db), str(_captures(tmp_path, EFI_BOOT))).exit_code == 0
    engine = make_engine(resolve_url(str(db)), create=False)
    with engine.begin() as conn:
        doc = conn.execute(ledger_documents.select()).one().document
        for key in ("loader", "type_of_loader", "kdump", "kexec"):
            del doc["kernel"][key]
        del doc["firmware"]["vendor"]
        conn.execute(ledger_documents.update().values(document=doc))
    families = {m.name: m for m in StoreCollector(engine, machine_id(0)).collect()}
    with engine.connect() as conn:
        stored = latest_boots(conn, machine_id(0), 1)[0]["document"]
    engine.dispose()
    assert families["memledger_store_up"].samples[0].value == 1
    boot = families["memledger_boot"].samples[0].labels
    assert boot["kernel_release"] == _osrelease(EFI_BOOT) and boot["loader"] == ""
    assert stored["kernel"]["kexec"] is None and stored["firmware"]["vendor"] is None


def test_a_store_command_that_finds_nothing_names_the_database_it_read(tmp_path: Path) -> None:
    """Without --db a command reads the default store: "no stored boots match" alone leaves
    a newcomer guessing which database that was."""
    state = tmp_path / "state"
    state.mkdir()
    env = {"STATE_DIRECTORY": str(state), "MEMLEDGER_DB": None}
    default = state / "memledger.db"
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(_captures(tmp_path, EFI_BOOT))], env=env).exit_code == 0
    release = _osrelease(EFI_BOOT)
    result = runner.invoke(main, ["compare", "--baseline", "5.10.0-32-amd64", "--candidate", release],
                           env=env)
    assert result.exit_code == 2
    assert result.stderr == (f"memledger: error: no stored boots match '5.10.0-32-amd64' in "
                             f"sqlite:///{default}\n")

    empty = tmp_path / "empty.db"
    engine = make_engine(resolve_url(str(empty)), create=True)
    upgrade(engine)
    engine.dispose()
    result = runner.invoke(main, ["boots", "--db", str(empty)])
    assert result.exit_code == 0 and result.stderr == f"no stored boots in sqlite:///{empty}\n"
    result = runner.invoke(main, ["reprocess", "--db", str(empty)])
    assert result.exit_code == 0
    assert result.stderr.startswith(f"reprocessed 0 boots in sqlite:///{empty}:")


def _freed_below_1mib(root: Path) -> int:
    """Whole pages of the log's memblock_free_late lines below 1 MiB (this test's own regex)."""
    total = 0
    for start, end in re.findall(r"memblock_free_late: \[0x([0-9a-f]+)-0x([0-9a-f]+)\]",
                                 (root / "dmesg.txt").read_text()):
        s, e = int(start, 16), int(end, 16) + 1
        if s < 1 << 20:
            total += min(e, 1 << 20) - s
    return total


OLD_LOW, NEW_LOW = "5.10.0-32-amd64-memblock", "6.1.0-47-amd64-memblock"


@pytest.fixture(scope="module")
def low_freed_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """5.10 frees a boot-services page below 1 MiB, 6.1 none (memblock=debug shows both),
    one host booting each: compare's table, the HTML paired table, ``boots`` and the
    landing page once read "-0.0" in a verdict's colour, "0.0 → 0.0 (-0.0)" in green and
    "freed 0.0 MiB". The store, and the figure as the log's own lines give it."""
    freed = _freed_below_1mib(BOOTS / OLD_LOW / "root")
    assert freed == 4096 and _freed_below_1mib(BOOTS / NEW_LOW / "root") == 0
    tmp = tmp_path_factory.mktemp("low")
    d = tmp / "captures"
    d.mkdir()
    for i, name in enumerate((OLD_LOW, NEW_LOW)):
        (d / f"{name}.tar.gz").write_bytes(make_capture(name, 0, i, minutes=i))
    db = str(tmp / "m.db")
    assert _run("ingest", "--db", db, str(d)).exit_code == 0
    return db, f"{freed // 1024} KiB"


def _low_sides() -> list[str]:
    return ["--baseline", _osrelease(OLD_LOW), "--candidate", _osrelease(NEW_LOW)]


def test_compare_s_table_tells_a_change_under_a_mib_in_kib(low_freed_store: tuple[str, str]) -> None:
    db, kib = low_freed_store
    table = CliRunner().invoke(main, ["compare", "--db", db, *_low_sides()], env={"COLUMNS": "200"})
    row = next(ln.split() for ln in table.stdout.splitlines() if ln.strip().startswith("<1M freed"))
    short = kib.replace(" KiB", "K")  # the narrow table's unit
    assert row[2:] == ["1p", short, "0.0", f"-{short}", "0.0", "improvement"]
    assert "-0.0" not in table.stdout


def test_the_html_paired_table_tells_a_change_under_a_mib_in_kib(
        tmp_path: Path, low_freed_store: tuple[str, str]) -> None:
    db, kib = low_freed_store
    out = tmp_path / "r.html"
    assert _run("compare", "--db", db, *_low_sides(), "--format", "html",
                "-o", str(out)).exit_code in (0, 1)
    page = lxml.html.fromstring(out.read_text())
    heads = [th.text_content() for th in page.xpath("//table[@class='pairs']//th")]
    cell = page.xpath("//table[@class='pairs']//tr[td]")[0][heads.index("low_freed")]
    assert (cell.text_content(), cell.get("class")) == (f"{kib} → 0.0 (-{kib})", "better")


def test_boots_and_the_landing_page_tell_a_figure_under_a_mib_in_kib(
        low_freed_store: tuple[str, str]) -> None:
    db, kib = low_freed_store
    engine = make_engine(resolve_url(db), create=False)
    with engine.connect() as conn:
        boot = [b for b in latest_boots(conn, machine_id(0), 2)
                if b["kernel_release"] == _osrelease(OLD_LOW)]
    engine.dispose()
    assert boot_facts(boot[0])["below 1 MiB"].endswith(f"freed {kib}")
    boots = CliRunner().invoke(main, ["boots", "--db", db], env={"COLUMNS": "200"})
    row = next(ln.split() for ln in boots.stdout.splitlines() if _osrelease(OLD_LOW) in ln)
    assert row[-2] == kib.replace(" KiB", "K")  # the <1M column, then the anomaly count


def test_compare_s_table_keeps_every_host_s_name_when_piped(tmp_path: Path) -> None:
    """In a CI log (stdout not a terminal, no COLUMNS) the table once had 80 columns:
    hosts lab-memblock and lab-mem8g both read "lab-me…"."""
    d = tmp_path / "captures"
    d.mkdir()
    names = {0: "lab-memblock", 1: "lab-mem8g"}
    for host, name in names.items():
        for b, boot in enumerate(("5.10.0-32-amd64-memblock", "6.1.0-47-amd64-memblock")):
            (d / f"{host}-{b}.tar.gz").write_bytes(make_capture(boot, host, b, minutes=b,
                                                                hostname=name))
    db = str(tmp_path / "m.db")
    assert _run("ingest", "--db", db, str(d)).exit_code == 0
    table = CliRunner().invoke(main, ["compare", "--db", db, "--baseline", "5.10.0-32-amd64",
                                      "--candidate", "6.1.0-47-amd64"], env={"COLUMNS": None})
    assert table.exit_code == 0, table.stderr
    hosts = [ln.split()[0] for ln in table.stdout.splitlines() if ln.strip().startswith("lab-")]
    assert sorted(hosts) == sorted(names.values())
    assert "…" not in table.stdout
