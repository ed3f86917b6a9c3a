"""``memledger compare`` on the real fixture boots, on SQLite and on PostgreSQL.

Oracle: the kernel's own ``efi: Freeing EFI boot services memory`` lines of the same
boots, its command line (efi=debug boots measure no reclaim and are left out), and its
own MemTotal against the zones' managed pages (the leak).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from capturegen import BOOT_NAMES, BOOTS, T0, boot_id, machine_id, make_capture
from conftest import kernel_efi_freed_bytes, run_cli
from memledger.exporters.report import BASELINE_COLOR, CANDIDATE_COLOR
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import ingest_bytes
from memledger.store.migrate import upgrade
from PIL import Image

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

OLD, NEW = "6.1.0-47-amd64", "6.12.117+deb12-amd64"


@pytest.fixture
def store(db_url: str) -> str:
    eng = make_engine(resolve_url(db_url))
    upgrade(eng)
    for i, name in enumerate(BOOT_NAMES):
        ingest_bytes(eng, make_capture(name, i, 1), "test")
    eng.dispose()
    return db_url


def kernel_reclaimed(release: str) -> list[int]:
    """What the kernel printed for each boot of ``release``."""
    out = []
    for name in BOOT_NAMES:
        if name.rsplit("-", 1)[0] != release:
            continue
        root = BOOTS / name / "root"
        freed = kernel_efi_freed_bytes((root / "dmesg.txt").read_text())
        if freed is not None and "efi=debug" not in (root / "proc/cmdline").read_text():
            out.append(freed)
    return out


def _json(db: str, *args: str) -> tuple[int, dict]:
    proc = run_cli("compare", "--db", db, "--format", "json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_compare_shows_the_real_difference(store: str) -> None:
    code, d = _json(store, "--baseline", OLD, "--candidate", NEW)
    assert code == 0 and d["regressions"] == []
    assert d["baseline"]["boots"] == sum(1 for b in BOOT_NAMES if b.rsplit("-", 1)[0] == OLD)
    figs = {f["name"]: f for f in d["figures"]}
    old, new = kernel_reclaimed(OLD), kernel_reclaimed(NEW)
    rec = figs["reclaimed"]
    assert (rec["baseline"]["n"], rec["candidate"]["n"]) == (len(old), len(new))
    assert rec["baseline"]["median"] == statistics.median(old)
    assert rec["candidate"]["median"] == statistics.median(new)
    assert rec["delta"] == statistics.median(new) - statistics.median(old)
    # p10 and p90 are values some boot had (nearest rank), never between two boots.
    for side, printed in (("baseline", old), ("candidate", new)):
        assert {rec[side]["p10"], rec[side]["p90"]} <= set(printed), (rec[side], printed)
        assert rec[side]["p10"] == sorted(printed)[0] and rec[side]["p90"] == sorted(printed)[-1]
    assert rec["verdict"] == "improvement"
    total = figs["total"]
    assert total["candidate"]["median"] > total["baseline"]["median"]
    assert total["verdict"] == "changed"
    # The other way round, the same numbers are a regression, and the exit code says so.
    code, back = _json(store, "--baseline", NEW, "--candidate", OLD)
    assert code == 1 and back["regressions"] == ["reclaimed"]


def test_all_four_formats(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["compare", "--db", store, "--baseline", OLD, "--candidate", NEW]
    monkeypatch.setenv("COLUMNS", "80")  # an 80-column terminal: the table fits it
    narrow = run_cli(*args)
    assert narrow.returncode == 0
    assert max(map(len, narrow.stdout.splitlines())) <= 80
    monkeypatch.delenv("COLUMNS")
    table = run_cli(*args)  # piped: nothing cut, the tables as wide as their rows
    assert table.returncode == 0 and "…" not in table.stdout
    rows = {ln.split()[0]: ln for ln in table.stdout.splitlines() if ln.strip()}
    mib = (statistics.median(kernel_reclaimed(NEW)) - statistics.median(kernel_reclaimed(OLD))) / (1 << 20)
    assert f"+{mib:.1f}" in rows["reclaimed"] and "improvement" in rows["reclaimed"]
    assert "changed" in rows["total"]
    md = run_cli(*args, "--format", "markdown")
    assert md.returncode == 0
    lines = md.stdout.splitlines()
    assert lines[0] == f"### memledger compare: {OLD} (7 boots, 7 hosts) → {NEW} (7 boots, 7 hosts)"
    assert lines[2] == "**Verdict: improvement**"
    assert "| figure | compared | baseline | candidate | change | threshold | verdict |" in lines
    assert any(ln.startswith("| EFI boot services: reclaimed |") and ln.endswith("| improvement |")
               for ln in lines)
    assert "No regression." in lines
    out = tmp_path / "r.html"
    html = run_cli(*args, "--format", "html", "-o", str(out))
    assert html.returncode == 0 and out.read_text().startswith("<!doctype html>")
    # A plot for every figure some boot has (the anomaly count always is).
    assert out.read_text().count("<svg") == 9


def _kernel_leak(name: str) -> int:
    """The kernel's own MemTotal minus the pages its zones manage, in bytes."""
    root = BOOTS / name / "root"
    memtotal = int(re.search(r"MemTotal:\s+(\d+) kB", (root / "proc/meminfo").read_text()).group(1))
    managed = sum(int(m) for m in re.findall(r"\n\s+managed\s+(\d+)", (root / "proc/zoneinfo").read_text()))
    return memtotal * 1024 - managed * 4096


def _store_of(db: str | Path, boots: list[tuple[str, int, int]],
              uptime_s: float | None = None) -> str:
    """A store (``db``, or SQLite in a directory) holding fixture boots (name, host, boot
    number), each captured ``uptime_s`` after it booted when given (its /proc/uptime)."""
    db = f"sqlite:///{db / 'm.db'}" if isinstance(db, Path) else db
    eng = make_engine(resolve_url(db))
    upgrade(eng)
    for name, host, boot in boots:
        ingest_bytes(eng, make_capture(name, host, boot, minutes=boot, uptime_s=uptime_s), "test")
    eng.dispose()
    return db


# Two hosts roll from bullseye's 5.10 (the deferred-page leak at 2 GiB) to bookworm's 6.1.
ROLLOUT = [("5.10.0-32-amd64-default", 1, 1), ("5.10.0-32-amd64-mem8g", 2, 1),
           ("6.1.0-56-amd64-default", 1, 2), ("6.1.0-56-amd64-mem8g", 2, 2)]


def test_a_host_that_booted_both_kernels_is_compared_with_itself(db_url: str) -> None:
    db = _store_of(db_url, ROLLOUT)
    leak_2g, leak_8g = _kernel_leak(ROLLOUT[0][0]), _kernel_leak(ROLLOUT[1][0])
    assert leak_2g > 0 and leak_8g == _kernel_leak(ROLLOUT[2][0]) == _kernel_leak(ROLLOUT[3][0]) == 0
    code, d = _json(db, "--baseline", "6.1.0-56-amd64", "--candidate", "5.10.0-32-amd64")
    assert code == 1 and d["verdict"] == "regression"
    leaked = {f["name"]: f for f in d["figures"]}["leaked"]
    assert leaked["mode"] == "paired"
    assert leaked["hosts"] == {"paired": 2, "worse": 1, "better": 0, "changed": 0, "same": 1}
    assert leaked["delta"] == leak_2g  # any increase matters: the largest host's change
    assert leaked["verdict"] == "regression" and leaked["threshold"] == 0
    assert "leaked" in d["regressions"] and "anomaly:leak" in d["regressions"]
    assert d["reasons"][0].startswith("leaked regressed: ") and "1 of 2 paired hosts" in d["reasons"][0]
    assert any(r.startswith("new anomaly on the candidate: leak") for r in d["reasons"])
    assert any(r.startswith("small sample") and "leaked" in r for r in d["reasons"])
    pair = {p["machine_id"]: p for p in d["pairs"]}[machine_id(1)]
    assert pair["figures"]["leaked"] == {"baseline": 0, "candidate": leak_2g, "delta": leak_2g,
                                         "verdict": "regression"}
    # The other way round the leak is gone: an improvement, exit 0.
    code, d = _json(db, "--baseline", "5.10.0-32-amd64", "--candidate", "6.1.0-56-amd64")
    assert code == 0 and d["verdict"] == "improvement"
    assert "leak" in d["anomalies"]["gone"]


def test_populations_are_compared_when_too_few_hosts_booted_both(db_url: str) -> None:
    """Two of five hosts booted both kernels: too few to stand for the fleet."""
    db = _store_of(db_url, [*ROLLOUT, *((f"5.10.0-32-amd64-{c}", h, 1)
                                        for h, c in ((5, "default"), (6, "mem8g"), (7, "default")))])
    code, d = _json(db, "--baseline", "6.1.0-56-amd64", "--candidate", "5.10.0-32-amd64")
    assert d["pairs"] == [] and {f["mode"] for f in d["figures"]} <= {"populations", None}
    assert "not paired: 2 of 5 hosts booted both sides (fewer than half); the two populations " \
        "are compared" in d["reasons"]
    leaked = {f["name"]: f for f in d["figures"]}["leaked"]
    # Any increase matters: the candidate's highest leak against the baseline's (none).
    assert code == 1 and leaked["delta"] == _kernel_leak(ROLLOUT[0][0])
    assert (leaked["baseline"]["n"], leaked["candidate"]["n"]) == (2, 5)


def test_an_efi_debug_boot_is_no_measurement_of_reclaim(db_url: str) -> None:
    """Three boots a side: one efi=debug boot on the candidate kept everything by design.
    Counted, it made "kept" a 21 MiB regression; left out, it is named with why."""
    db = _store_of(db_url, [
        (f"{OLD}-memblock", 1, 1), (f"{OLD}-trace", 2, 1), (f"{OLD}-default", 3, 1),
        (f"{NEW}-efidebug", 4, 1), (f"{NEW}-memblock", 5, 1), (f"{NEW}-default", 6, 1)])
    code, d = _json(db, "--baseline", OLD, "--candidate", NEW)
    assert code == 0 and d["verdict"] == "improvement", d["reasons"]
    figs = {f["name"]: f for f in d["figures"]}
    assert figs["kept"]["verdict"] == "same"
    assert (figs["kept"]["candidate"]["n"], figs["kept"]["left_out"]["candidate"]) == (1, 1)
    assert figs["total"]["candidate"]["n"] == 2  # its memory map's total is real
    rec = figs["reclaimed"]
    assert rec["candidate"]["median"] == statistics.median(
        kernel_efi_freed_bytes((BOOTS / f"{NEW}-{c}/root/dmesg.txt").read_text())
        for c in ("memblock", "default"))
    [left] = d["left_out"]
    assert (left["machine_id"], left["reasons"]) == (machine_id(4), ["efi_debug"])
    assert left["figures"] == ["reclaimed", "kept", "leaked", "low_freed", "anomalies"]
    # Counted anyway, it is the regression it was.
    code, d = _json(db, "--baseline", OLD, "--candidate", NEW, "--include-all")
    assert code == 1 and "kept" in d["regressions"]


def test_every_format_names_the_boots_left_out_and_the_pairs(db_url: str) -> None:
    db = _store_of(db_url, [*ROLLOUT, ("6.1.0-56-amd64-efidebug", 3, 2)])
    efidebug = boot_id(3, 2)[:8]
    args = ["compare", "--db", db, "--baseline", "6.1.0-56-amd64", "--candidate", "5.10.0-32-amd64"]
    table = run_cli(*args)
    # The verdict rests on 2 paired hosts: its first line says so.
    first, rest = table.stdout.split("\n- ", 1)
    assert table.returncode == 1 and " ".join(first.split()) == (
        "verdict: regression — on a small sample, fewer than 5: leaked on 2 paired hosts, "
        "anomalies on 2 paired hosts; a change this size may be chance")
    assert rest.startswith("leaked regressed:")
    text = " ".join(table.stdout.split())  # rich wraps at 80 columns
    assert (f"left out (baseline): host-3 boot {efidebug} 6.1.0-56-amd64, of reclaimed, kept, "
            "leaked, low_freed, anomalies: efi=debug keeps every boot-services page by design") in text
    leak = _kernel_leak(ROLLOUT[0][0]) / (1 << 20)
    assert re.search(rf"host-1 +0\.0 → {leak:.1f} ", table.stdout)
    md = run_cli(*args, "--format", "markdown").stdout.splitlines()
    assert md[2] == ("**Verdict: regression** — on a small sample, fewer than 5: leaked on 2 "
                     "paired hosts, anomalies on 2 paired hosts; a change this size may be "
                     "chance")
    assert md[4].startswith("- leaked regressed:")
    # Markdown escapes the line's "_" (the line holds data: exporters/markdown.py).
    assert f"- left out (baseline): host-3 boot {efidebug} 6.1.0-56-amd64, of reclaimed, kept, " \
        "leaked, low\\_freed, anomalies: efi=debug keeps every boot-services page by design" in md
    assert any(ln.startswith(f"| host-1 | 0.0 → {leak:.1f} |") for ln in md)


def test_one_name_per_firmware_vendor(store: str) -> None:
    """DMI says "EFI Development Kit II / OVMF", the kernel log "EDK II": one vendor."""
    ovmf = [n for n in BOOT_NAMES if n.rsplit("-", 1)[0] in (OLD, NEW)
            and json.loads((BOOTS / n / "lab.json").read_text())["firmware"] == "ovmf"]
    for spelling in ("EDK II", "EFI Development Kit II / OVMF"):
        _, d = _json(store, "--baseline", OLD, "--candidate", NEW,
                     "--where", f"firmware_vendor={spelling}")
        assert d["baseline"]["boots"] + d["candidate"]["boots"] == len(ovmf) == 12


def _rendered(report: Path, tmp_path: Path) -> tuple[str, Image.Image]:
    """Headless Chromium's DOM after layout, and a screenshot."""
    chrome = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*chrome, "--dump-dom", report.as_uri()], capture_output=True,
                         text=True, timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    proc = subprocess.run([*chrome, "--window-size=1200,3000", f"--screenshot={shot}",
                           report.as_uri()], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    return dom.stdout, Image.open(shot).convert("RGB")


def _page_width(report: Path, tmp_path: Path, window: int) -> int:
    """The page's laid-out width in Chromium (a copy that writes it into the DOM)."""
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace(
        "</body>", "<script>document.body.dataset.width = "
        "document.documentElement.scrollWidth</script></body>"))
    dom = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                          f"--window-size={window},1000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    m = re.search(r'data-width="(\d+)"', dom.stdout)
    assert m, dom.stderr[-2000:]
    return int(m.group(1))


def _near(img: Image.Image, color: str, box: tuple[int, int, int, int] | None = None) -> int:
    want = tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
    raw = (img.crop(box) if box else img).tobytes()
    return sum(1 for i in range(0, len(raw), 3)
               if all(abs(raw[i + k] - want[k]) <= 8 for k in range(3)))


def test_html_report_in_chromium_leads_with_the_verdict_and_shows_its_evidence(tmp_path: Path) -> None:
    db = _store_of(tmp_path, [*ROLLOUT, ("6.1.0-56-amd64-efidebug", 3, 2)], uptime_s=42.5)
    report = tmp_path / "report.html"
    proc = run_cli("compare", "--db", db, "--baseline", "6.1.0-56-amd64", "--candidate",
                   "5.10.0-32-amd64", "--format", "html", "-o", str(report))
    assert proc.returncode == 1, proc.stderr
    dom, img = _rendered(report, tmp_path)
    from lxml import html as lhtml

    doc = lhtml.fromstring(dom)
    assert doc.get_element_by_id("verdict").text_content() == "verdict: regression"
    reasons = [li.text_content() for li in doc.get_element_by_id("reasons")]
    assert reasons[0].startswith("leaked regressed:")
    leak_mib = _kernel_leak(ROLLOUT[0][0]) / (1 << 20)
    assert f"+{leak_mib:.1f} MiB largest change on a host, 1 of 2 paired hosts" in reasons[0]
    def rows(table: str) -> list[Any]:
        return doc.xpath(f"//table[{table}]//tr[td]")

    figures = {tr[0].text_content(): [td.text_content() for td in tr] for tr in rows("@id='figures'")}
    # One vocabulary: the figures' names, as --threshold takes them, each explained once.
    assert figures["leaked"][-1] == "regression"
    assert figures["leaked"][1] == "2 paired hosts"
    assert figures["kept"][1] == "-"   # no boot of 5.10 measures it: not compared
    assert "low_freed: below 1 MiB: freed" in doc.get_element_by_id("glossary").text_content()
    captions = [c.text_content() for c in doc.xpath("//figcaption")]
    assert "leaked" in captions and set(captions) <= set(figures)
    # The verdict rests on 2 hosts: said at the verdict itself, not eighth among the reasons.
    assert doc.get_element_by_id("small-sample").text_content().startswith(
        "on a small sample, fewer than 5: leaked on 2 paired hosts")
    assert doc.get_element_by_id("small-sample").getprevious().get("id") == "verdict"
    hosts = [tr[0].text_content() for tr in rows("@class='pairs'")]
    assert sorted(hosts) == ["host-1", "host-2"]
    worse = [td.text_content() for tr in rows("@class='pairs'") for td in tr
             if td.get("class") == "worse"]
    assert worse[0] == f"0.0 → {leak_mib:.1f} (+{leak_mib:.1f})"  # host-1's leak, then anomalies
    assert not any("MiB" in w or "." in w for w in worse[1:])
    anomalies = {tr[0].text_content(): tr.get("class") for tr in rows("@id='anomalies'")}
    assert anomalies["leak"] == "new-kernel"
    left = [[td.text_content() for td in tr] for tr in rows("@id='left-out'")]
    assert [(r[0], r[1]) for r in left] == [("baseline", "host-3")]
    assert "efi=debug" in left[0][5]
    boots = doc.xpath("//table[@class='boots']")
    assert [len(t.xpath(".//tr[td]")) for t in boots] == [3, 2]
    # Booted: the capture's time less the uptime it recorded (its /proc/uptime).
    head = [th.text_content() for th in boots[1].xpath(".//th")]
    first = dict(zip(head, [td.text_content() for td in boots[1].xpath(".//tr[td]")[0]], strict=True))
    uptime = 42.5
    captured = T0 + timedelta(minutes=1)
    assert (first["host"], first["captured"]) == ("host-1", captured.strftime("%Y-%m-%d %H:%M:%S"))
    assert first["booted"] == (captured - timedelta(seconds=uptime)).strftime("%Y-%m-%d %H:%M:%S")
    # The page fits a 1400-pixel window: wide tables scroll inside it.
    assert _page_width(report, tmp_path, 1400) <= 1400
    # On screen: the red verdict banner at the top, and both sides' points in the plots.
    assert _near(img, "#c62828", (0, 0, 1200, 400)) > 2000
    assert _near(img, BASELINE_COLOR) > 300 and _near(img, CANDIDATE_COLOR) > 300


def test_where_and_thresholds(store: str) -> None:
    fw = (BOOTS / f"{OLD}-seabios/root/sys/class/dmi/id/bios_version").read_text().strip()
    _, d = _json(store, "--baseline", OLD, "--candidate", NEW, "--where", f"firmware_version={fw}")
    assert (d["baseline"]["boots"], d["candidate"]["boots"]) == (1, 1)  # the SeaBIOS boots
    assert {f["name"]: f["verdict"] for f in d["figures"]}["reclaimed"] == "unknown"
    _, d = _json(store, "--baseline", OLD, "--candidate", NEW, "--threshold", "reclaimed=8MiB")
    rec = {f["name"]: f for f in d["figures"]}["reclaimed"]
    assert rec["threshold"] == 8 << 20 and rec["verdict"] == "same"


@pytest.mark.parametrize("args, why", [
    (["--baseline", "5.10.*", "--candidate", NEW], "no stored boots match '5.10.*'"),
    (["--baseline", OLD, "--candidate", NEW, "--where", "colour=blue"], "--where 'colour=blue'"),
    (["--baseline", OLD, "--candidate", NEW, "--threshold", "speed=3"], "--threshold 'speed=3'"),
    (["--baseline", OLD, "--candidate", NEW, "--abs-threshold", "lots"], "is not a size"),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], why: str) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    eng = make_engine(resolve_url(db))
    upgrade(eng)
    ingest_bytes(eng, make_capture(f"{OLD}-default", 1, 1), "test")
    eng.dispose()
    proc = run_cli("compare", "--db", db, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and why in proc.stderr, proc.stderr


def test_a_size_under_a_mib_is_told_in_kib() -> None:
    """5.10 frees 4 KiB below 1 MiB where 6.1 frees none: the reasons say "-4 KiB" and the
    report's tables "4 KiB", never "-0.0 MiB" or "0.00 MiB"."""
    from memledger.exporters.report import _num as report_num
    from memledger.store.compare import size_text

    assert size_text(-4096, "bytes", signed=True) == "-4 KiB"
    assert size_text(-512, "bytes", signed=True) == "-512 bytes"
    assert size_text(29 * 1024 * 1024 + 4096, "bytes", signed=True) == "+29.0 MiB"
    assert size_text(-3, "count", signed=True) == "-3"
    assert report_num(40960, "bytes") == "40 KiB"
    assert report_num(42 * 1024 * 1024, "bytes") == "42.00 MiB"
    assert report_num(None, "bytes") == "?"
