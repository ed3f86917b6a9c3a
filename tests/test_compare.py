"""``memledger compare`` on the real fixture boots, on SQLite and on PostgreSQL.

Oracle: the kernel's own ``efi: Freeing EFI boot services memory`` lines of the same
boots (0 for efi=debug boots, which print none and keep everything; unknown for SeaBIOS).
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest
from capturegen import BOOT_NAMES, BOOTS, make_capture
from conftest import kernel_efi_freed_bytes, run_cli
from memledger.exporters.report import BASELINE_COLOR, CANDIDATE_COLOR
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import ingest_bytes
from memledger.store.migrate import upgrade
from PIL import Image

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
        if freed is not None:
            out.append(freed)
        elif "efi=debug" in (root / "proc/cmdline").read_text():
            out.append(0)
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
    assert rec["verdict"] == "improvement"
    total = figs["total"]
    assert total["candidate"]["median"] > total["baseline"]["median"]
    assert total["verdict"] == "changed"
    # The other way round, the same numbers are a regression, and the exit code says so.
    code, back = _json(store, "--baseline", NEW, "--candidate", OLD)
    assert code == 1 and back["regressions"] == ["reclaimed"]


def test_all_four_formats(store: str, tmp_path: Path) -> None:
    args = ["compare", "--db", store, "--baseline", OLD, "--candidate", NEW]
    table = run_cli(*args)
    assert table.returncode == 0
    assert max(map(len, table.stdout.splitlines())) <= 80
    rows = {ln.split()[0]: ln for ln in table.stdout.splitlines() if ln.strip()}
    mib = (statistics.median(kernel_reclaimed(NEW)) - statistics.median(kernel_reclaimed(OLD))) / (1 << 20)
    assert f"+{mib:.1f}" in rows["reclaimed"] and "improvement" in rows["reclaimed"]
    assert "changed" in rows["total"]
    md = run_cli(*args, "--format", "markdown")
    assert md.returncode == 0
    lines = md.stdout.splitlines()
    assert lines[0] == f"### memledger compare: {OLD} (7 boots) → {NEW} (7 boots)"
    assert "| figure | baseline | candidate | delta | verdict |" in lines
    assert any(ln.startswith("| EFI boot services: reclaimed |") and ln.endswith("| improvement |")
               for ln in lines)
    assert "No regression." in lines
    out = tmp_path / "r.html"
    html = run_cli(*args, "--format", "html", "-o", str(out))
    assert html.returncode == 0 and out.read_text().startswith("<!doctype html>")
    assert out.read_text().count("<svg") == 2


def test_html_report_screenshot_shows_the_plots(tmp_path: Path) -> None:
    """Headless Chromium renders the one-file report; the boxes of both sides' colours fill
    far more pixels than the two legend squares could."""
    db = f"sqlite:///{tmp_path / 'm.db'}"
    eng = make_engine(resolve_url(db))
    upgrade(eng)
    for i, name in enumerate(BOOT_NAMES):
        ingest_bytes(eng, make_capture(name, i, 1), "test")
    eng.dispose()
    report = tmp_path / "report.html"
    assert run_cli("compare", "--db", db, "--baseline", "6.1.*", "--candidate", "6.12.*",
                   "--format", "html", "-o", str(report)).returncode == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--window-size=1200,1800",
                           f"--screenshot={shot}", report.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1800)
    raw = img.tobytes()
    pixels = [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]

    def near(rgb: tuple[int, int, int], color: str) -> bool:
        want = tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
        return all(abs(a - b) <= 8 for a, b in zip(rgb, want, strict=True))

    base = sum(1 for p in pixels if near(p, BASELINE_COLOR))
    cand = sum(1 for p in pixels if near(p, CANDIDATE_COLOR))
    blank = sum(1 for p in pixels if p == (255, 255, 255))
    assert base > 3000 and cand > 3000, (base, cand)
    assert blank < 0.97 * len(pixels)


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
