"""deploy/: the systemd unit checked by Debian's real systemd-analyze, and ``make run``."""

from __future__ import annotations

import configparser
import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import MEMLEDGER
from daemonrun import wait_for

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

REPO = Path(__file__).parent.parent
UNIT = REPO / "deploy" / "systemd" / "memledger.service"


COLLECTOR = UNIT.parent / "memledger-collector.service"
PRUNE = UNIT.parent / "memledger-prune.service"


def _unit(path: Path = UNIT) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(path)
    return cp


@pytest.mark.parametrize(("path", "command"), [(UNIT, "daemon $MEMLEDGER_ARGS"),
                                               (COLLECTOR, "collect $MEMLEDGER_COLLECT_ARGS"),
                                               (PRUNE, "prune $MEMLEDGER_PRUNE_ARGS")])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, path: Path, command: str) -> None:
    """verify checks every directive and that ExecStart= is executable; the installed
    path (/usr/local/bin/memledger) is swapped for this checkout's, as an installer would."""
    text = path.read_text()
    assert f"ExecStart=/usr/local/bin/memledger {command}" in text
    unit = tmp_path / path.name
    unit.write_text(text.replace("/usr/local/bin/memledger", MEMLEDGER))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    # The same check does catch a bad directive.
    unit.write_text(text.replace("/usr/local/bin/memledger", MEMLEDGER)
                    .replace("ProtectHome=yes", "ProtectHome=sometimes"))
    bad = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, check=False, cwd=tmp_path)
    assert "Failed to parse protect home value" in bad.stderr


def test_daemon_unit_is_a_notify_service_without_privilege() -> None:
    s = _unit()["Service"]
    assert s["Type"] == "notify" and s["StateDirectory"] == "memledger"
    assert s["WatchdogSec"] == "60s"
    assert (s["ProtectSystem"], s["ProtectHome"], s["PrivateTmp"], s["NoNewPrivileges"]) == \
        ("strict", "yes", "yes", "yes")
    # No capabilities at all: the collector reads the kernel, the daemon only its spool.
    assert s["CapabilityBoundingSet"] == s["AmbientCapabilities"] == ""
    assert s["User"] == "memledger" and s["Environment"] == "MEMLEDGER_CAPTURE_SELF=false"
    assert s["EnvironmentFile"] == "-/etc/default/memledger"


def test_prune_timer_runs_the_prune_daily_and_passes_verify(tmp_path: Path) -> None:
    """The timer starts the prune service (of its own name) daily; the service is a
    oneshot as the daemon's user on the daemon's store, with an age rule by default that
    the environment file can replace."""
    timer = _unit(PRUNE.with_suffix(".timer"))
    assert timer["Timer"]["OnCalendar"] == "daily" and timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"
    s = _unit(PRUNE)["Service"]
    assert s["Type"] == "oneshot" and s["User"] == "memledger"
    assert s["StateDirectory"] == _unit()["Service"]["StateDirectory"]
    assert s["Environment"] == "MEMLEDGER_PRUNE_OLDER_THAN=180d"
    assert "[Install]" not in PRUNE.read_text()  # started by its timer only
    service = tmp_path / PRUNE.name
    service.write_text(PRUNE.read_text().replace("/usr/local/bin/memledger", MEMLEDGER))
    (tmp_path / "memledger-prune.timer").write_text(PRUNE.with_suffix(".timer").read_text())
    proc = subprocess.run(["systemd-analyze", "verify", str(service),
                           str(tmp_path / "memledger-prune.timer")], capture_output=True,
                          text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_collector_unit_has_only_the_three_capabilities() -> None:
    s = _unit(COLLECTOR)["Service"]
    assert s["Type"] == "notify"
    assert set(s["CapabilityBoundingSet"].split()) == {"CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG"}
    assert s["SupplementaryGroups"] == "memledger"
    # The hardening options that break eBPF or the kernel log stay out (the unit says why).
    for option in ("ProtectKernelTunables", "ProtectKernelLogs", "PrivateUsers",
                   "MemoryDenyWriteExecute", "PrivateDevices", "ProtectKernelModules"):
        assert option not in s, option
    tmpfiles = (UNIT.parent / "memledger.tmpfiles").read_text()
    assert re.search(r"^d /var/lib/memledger/spool\s+2770 memledger memledger", tmpfiles, re.M)
    assert s["ReadWritePaths"] == "/var/lib/memledger/spool"


@pytest.mark.parametrize(("default", "command", "extra"), [
    ("memledger.default", "daemon", "MEMLEDGER_ARGS"),
    ("memledger-collector.default", "collect", "MEMLEDGER_COLLECT_ARGS"),
    ("memledger-prune.default", "prune", "MEMLEDGER_PRUNE_ARGS")])
def test_environment_files_name_real_flags(default: str, command: str, extra: str) -> None:
    """Every variable in the environment file is one the command reads."""
    helptext = subprocess.run([MEMLEDGER, command, "--help"], capture_output=True, text=True,
                              check=True).stdout
    helptext = " ".join(helptext.split())
    names = re.findall(r"^#?(MEMLEDGER_\w+)=", (UNIT.parent / default).read_text(), re.M)
    assert len(names) >= 3
    for name in names:
        assert name == extra or f"env var: {name}" in helptext, name


def test_make_run_shows_a_live_daemon(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "-s", "run", f"RUN_DIR={tmp_path}",
                                 "RUN_LISTEN=127.0.0.1:0"], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for("make run to serve", lambda: "serving http://" in log.read_text(), 120)
            text = log.read_text()
            assert f"database sqlite:///{tmp_path}/memledger.db, spool {tmp_path}/spool," in text
            address = re.search(r"serving (http://\S+/metrics)", text)
            assert address is not None
            wait_for("this boot to be stored", lambda: "this boot: " in log.read_text(), 60)
            with urllib.request.urlopen(address.group(1), timeout=10) as r:
                body = r.read().decode()
            assert "memledger_store_boots 1.0" in body
            assert (tmp_path / "spool" / "done").is_dir()
            # The command line finds the same database: one state directory for both.
            listed = subprocess.run([MEMLEDGER, "boots", "--json"], capture_output=True, text=True,
                                    env={**os.environ, "STATE_DIRECTORY": str(tmp_path)}, check=True)
            boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            assert [b["boot_id"] for b in json.loads(listed.stdout)] == [boot_id]
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(60)
    assert "SIGINT: finishing the current capture, then exiting" in log.read_text()
    assert "stopped: 1 stored" in log.read_text()


def _demo(demo_dir: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["./scripts/demo"], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "DEMO_DIR": str(demo_dir), "BIN": str(bin_dir)})


def test_make_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    """DEMO_DIR=~ once meant rm -rf ~: a folder with files and no demo marker is left as it
    is, in one line and exit 2, before anything runs (BIN names no memledger here)."""
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "work" / "thesis.tex").write_text("years of work\n")
    proc = _demo(home, tmp_path / "no-bin")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(home) in proc.stderr and proc.stdout == ""
    assert [p.relative_to(home).as_posix() for p in sorted(home.rglob("*"))] == \
        ["work", "work/thesis.tex"]


def test_make_demo_removes_only_what_it_wrote(tmp_path: Path) -> None:
    """In its own folder (the marker), a new run removes the demo's store, captures and
    report, and nothing else: a file the user put beside them stays."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "memledger").write_text("#!/bin/sh\necho 'stub memledger' >&2\nexit 3\n")
    (bin_dir / "memledger").chmod(0o755)
    demo = tmp_path / "demo"
    demo.mkdir()  # an empty folder is the demo's to use
    assert _demo(demo, bin_dir).returncode == 1  # the stub capture fails: the demo stops
    assert (demo / ".memledger-demo").exists()
    for name in ("memledger.db", "memledger.db-wal", "compare.html", "captures/old.tar.gz"):
        (demo / name).write_text("from the last run\n")
    (demo / "notes.txt").write_text("mine\n")
    proc = _demo(demo, bin_dir)
    assert proc.returncode == 1 and "stub memledger" in proc.stderr
    assert sorted(p.relative_to(demo).as_posix() for p in demo.rglob("*")) == \
        [".memledger-demo", "captures", "notes.txt"]
