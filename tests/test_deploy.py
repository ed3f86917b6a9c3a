"""deploy/: the systemd unit checked by Debian's real systemd-analyze, and ``make run``."""

from __future__ import annotations

import configparser
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

from conftest import MEMLEDGER
from daemonrun import wait_for

REPO = Path(__file__).parent.parent
UNIT = REPO / "deploy" / "systemd" / "memledger.service"


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNIT)
    return cp


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify checks every directive and that ExecStart= is executable; the installed
    path (/usr/local/bin/memledger) is swapped for this checkout's, as an installer would."""
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/memledger daemon $MEMLEDGER_ARGS" in text
    unit = tmp_path / "memledger.service"
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


def test_unit_is_a_notify_service_with_least_privilege() -> None:
    s = _unit()["Service"]
    assert s["Type"] == "notify" and s["StateDirectory"] == "memledger"
    assert s["WatchdogSec"] == "60s"
    assert (s["ProtectSystem"], s["ProtectHome"], s["PrivateTmp"], s["NoNewPrivileges"]) == \
        ("strict", "yes", "yes", "yes")
    # Reading the kernel log is the only privilege.
    assert s["CapabilityBoundingSet"] == s["AmbientCapabilities"] == "CAP_SYSLOG"
    assert "ProtectKernelLogs" not in s and "PrivateDevices" not in s
    assert s["EnvironmentFile"] == "-/etc/default/memledger"


def test_environment_file_names_real_flags() -> None:
    """Every variable in memledger.default is one `memledger daemon` reads."""
    helptext = subprocess.run([MEMLEDGER, "daemon", "--help"], capture_output=True, text=True,
                              check=True).stdout
    helptext = " ".join(helptext.split())
    names = re.findall(r"^#?(MEMLEDGER_\w+)=", (UNIT.parent / "memledger.default").read_text(), re.M)
    assert len(names) >= 7
    for name in names:
        assert name == "MEMLEDGER_ARGS" or f"env var: {name}" in helptext, name


def test_make_run_shows_a_live_daemon(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "-s", "run", f"RUN_DIR={tmp_path}",
                                 "RUN_LISTEN=127.0.0.1:0"], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for("make run to serve", lambda: "serving http://" in log.read_text(), 120)
            text = log.read_text()
            assert f"database {tmp_path}/state/memledger.db" in text
            address = re.search(r"serving (http://\S+/metrics)", text)
            assert address is not None
            wait_for("this boot to be stored", lambda: "this boot: " in log.read_text(), 60)
            with urllib.request.urlopen(address.group(1), timeout=10) as r:
                body = r.read().decode()
            assert "memledger_store_boots 1.0" in body
            assert (tmp_path / "state" / "spool" / "done").is_dir()
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(60)
    assert "SIGINT: finishing the current capture, then exiting" in log.read_text()
    assert "stopped: 1 stored" in log.read_text()
