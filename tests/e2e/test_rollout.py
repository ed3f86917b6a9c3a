"""A kernel rollout in the lab, end to end, as a fleet runs one.

Three lab hosts (their own machine ids; 2, 4 and 8 GiB) boot Debian bullseye's 5.10,
from before the 2026 fix of the deferred-page leak, and then bookworm's 6.1, which has
it. At each boot, as on a fleet machine:

- the host's ``memledger daemon`` (host mode, its own SQLite) starts and captures the
  running boot (``--root`` is the lab boot's tree, with the host's ``etc/machine-id``);
- ``memledger capture`` writes the boot into the spool of a central ``--fleet`` daemon
  on PostgreSQL, which ingests it;
- a real Prometheus scrapes every daemon with deploy/prometheus/alerts.yml loaded.

The oracle is each kernel's own MemTotal against the pages its zones manage
(/proc/meminfo, /proc/zoneinfo, read here with this file's own patterns): the hosts
where they differ are the leaking ones. On 5.10 the leak alert must fire for exactly
those hosts, and stop once they run 6.1; ``memledger compare`` on the central store
must call the leak a regression in the 5.10 direction (exit 1) and an improvement in the
other (exit 0), host by host; and every figure panel of the Grafana dashboard must
return data from the scraped daemons, but the previous boot's reclaim, which 5.10
cannot show.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from daemonrun import Daemon, wait_for
from labboot import cached_kernel, lab_boot, rollout_missing
from memledger.exporters.dashboard import BUILDERS, expressions
from promrun import Prometheus, free_port

REPO = Path(__file__).parent.parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = REPO / "deploy" / "grafana"
HOSTS = {"lab-2g": "2G", "lab-4g": "4G", "lab-8g": "8G"}
# Made up, one per host, as systemd-machine-id-setup would write them.
MACHINE_IDS = {name: f"{i + 1:x}" * 32 for i, name in enumerate(HOSTS)}
VARIABLES = {"$kernel_release": ".*", "$firmware": ".*", "$instance": ".*",
             "$__rate_interval": "1m"}


SKIP_REASON = rollout_missing()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


def kernel_leak_bytes(root: Path) -> int:
    """MemTotal minus the pages the zones manage, as the kernel counted them."""
    memtotal = re.search(r"^MemTotal:\s+(\d+) kB$", (root / "proc/meminfo").read_text(), re.M)
    assert memtotal, root
    managed = re.findall(r"^\s+managed\s+(\d+)$", (root / "proc/zoneinfo").read_text(), re.M)
    assert managed, root
    return int(memtotal.group(1)) * 1024 - sum(map(int, managed)) * 4096


def boot(kernel: str, host: str, out: Path) -> Path:
    """Boot ``kernel`` as lab host ``host``; the boot's tree, with the host's machine id."""
    return lab_boot(kernel, HOSTS[host], MACHINE_IDS[host], out)


class Rollout:
    """The daemons, the store and Prometheus, and each wave's boots."""

    def __init__(self, tmp: Path, db: str) -> None:
        self.tmp, self.db = tmp, db
        self.fleet_spool = tmp / "fleet-spool"
        self.fleet_spool.mkdir()
        self.fleet = Daemon(tmp, db, self.fleet_spool, "--fleet", "--fleet.refresh", "2s")
        self.ports = {h: free_port() for h in HOSTS}
        self.hosts: dict[str, Daemon] = {}
        self.roots: dict[str, dict[str, Path]] = {}
        targets = {h: f"127.0.0.1:{p}" for h, p in self.ports.items()}
        self.prom = Prometheus(tmp, {**targets, "fleet": self.fleet.address}, [ALERTS])

    def wave(self, kernel: str) -> dict[str, Path]:
        """Every host reboots into ``kernel``: its daemon restarts and captures the boot,
        and the boot's capture goes to the fleet spool."""
        with ThreadPoolExecutor(2) as pool:
            roots = dict(zip(HOSTS, pool.map(
                lambda h: boot(kernel, h, self.tmp / f"{kernel}-{h}"), HOSTS), strict=True))
        self.roots[kernel] = roots
        for host, root in roots.items():
            if host in self.hosts:
                assert self.hosts[host].stop() == 0
            spool = self.tmp / f"spool-{host}-{kernel}"
            spool.mkdir()
            self.hosts[host] = Daemon(
                self.tmp, f"sqlite:///{self.tmp / host}.db", spool, "--root", str(root),
                "--web.listen-address", f"127.0.0.1:{self.ports[host]}", capture_self=True)
            proc = run_cli("capture", "--root", str(root), "--hostname", host,
                           "-o", str(self.fleet_spool) + "/")
            assert proc.returncode == 0, proc.stderr
        # A daemon serves /metrics before it captures its own boot (it serves while its
        # store is away): a scrape in between has the host up but without its boot.
        for host, d in self.hosts.items():
            wait_for(f"{host}'s daemon to store its {kernel} boot", lambda d=d: d.metric(
                'memledger_ingest_total{result="ok"}') >= 1, 60)
        wait_for(f"the fleet daemon to store the {kernel} wave", lambda: self.fleet.metric(
            'memledger_ingest_total{result="ok"}') >= 3 * len(self.roots), 120)
        return roots

    def raised(self, alert: str) -> dict[str, float]:
        """The kernel releases ``alert`` is raised for (pending or firing: the kernel
        alerts wait 10 minutes), each with its value (the hosts it counts)."""
        return {a["labels"]["kernel_release"]: float(a["value"]) for a in self.prom.alerts()
                if a["labels"]["alertname"] == alert}

    def stop(self) -> None:
        self.prom.stop()
        for d in [self.fleet, *self.hosts.values()]:
            d.stop()


@pytest.fixture(scope="module")
def rollout(tmp_path_factory: pytest.TempPathFactory, pg_server: Any) -> Iterator[dict[str, Any]]:
    leaking, fixed = cached_kernel("5.10"), cached_kernel("6.1", "bookworm")
    assert leaking is not None and fixed is not None
    r = Rollout(tmp_path_factory.mktemp("rollout"), str(pg_server.new_database()))
    try:
        old = r.wave(leaking.release)
        leaks = {h: kernel_leak_bytes(root) for h, root in old.items()}
        # The alerts as the 5.10 wave left them, before the next wave resolves them.
        wait_for("Prometheus to scrape every daemon", lambda: r.prom.targets_up() == dict.fromkeys(
            [*HOSTS, "fleet"], 1.0), 60)
        leaking_hosts = sum(1.0 for b in leaks.values() if b > 0)
        wait_for("the leak alert", lambda: r.raised("MemledgerEfiBootServicesLeak").get(
            leaking.release) == leaking_hosts, 60)
        # Every host's boot scraped, not only the leaking ones the alert counts.
        wait_for("Prometheus to hold every host's 5.10 boot",
                 lambda: _leaked(r.prom).keys() == HOSTS.keys(), 60)
        old_alerts = r.raised("MemledgerEfiBootServicesLeak")
        old_panels = {expr: r.prom.query(_fill(expr)) for _, expr in _panels()}
        old_leaked = _leaked(r.prom)
        new = r.wave(fixed.release)
        yield {"r": r, "leaking": leaking.release, "fixed": fixed.release, "old": old,
               "new": new, "leaks": leaks, "old_alerts": old_alerts, "old_panels": old_panels,
               "old_leaked": old_leaked}
    finally:
        r.stop()


def _leaked(prom: Prometheus) -> dict[str, float]:
    """Each host daemon's exported leak of its current boot."""
    return {row["metric"]["instance"]: float(row["value"][1]) for row in prom.query(
        'memledger_efi_boot_services_bytes{state="leaked", instance!="fleet"}')}


def _fill(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def _panels() -> list[tuple[str, str]]:
    return [p for name in BUILDERS for p in expressions(json.loads((DASHBOARDS / name).read_text()))]


def test_the_leaking_kernel_leaks_on_the_small_host_only(rollout: dict[str, Any]) -> None:
    """The kernels' own counters: 5.10 leaks on 2 GiB (the deferred pages of DMA32), and
    6.1 nowhere. Without this the rollout would show nothing."""
    assert rollout["leaks"]["lab-2g"] > 0
    assert rollout["leaks"]["lab-8g"] == 0
    assert all(kernel_leak_bytes(root) == 0 for root in rollout["new"].values())


def test_the_leak_alert_is_raised_once_for_the_leaking_kernel(rollout: dict[str, Any]) -> None:
    """One alert, naming the release, its value the hosts whose kernel counters leak."""
    assert rollout["old_alerts"] == {
        rollout["leaking"]: sum(1.0 for b in rollout["leaks"].values() if b > 0)}
    r: Rollout = rollout["r"]
    # Each host daemon exported its own boot's leak: the kernel's own difference.
    assert rollout["old_leaked"] == {h: float(b) for h, b in rollout["leaks"].items()}
    # After the 6.1 wave no host leaks: the alert resolves.
    wait_for("the leak alert to resolve", lambda: not r.raised("MemledgerEfiBootServicesLeak"), 60)
    wait_for("the 6.1 boots to be scraped", lambda: _leaked(r.prom) == dict.fromkeys(HOSTS, 0.0), 60)


def _compare(db: str, baseline: str, candidate: str) -> tuple[int, dict[str, Any]]:
    proc = run_cli("compare", "--db", db, "--baseline", baseline, "--candidate", candidate,
                   "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_compare_calls_the_leak_a_regression_host_by_host(rollout: dict[str, Any]) -> None:
    r: Rollout = rollout["r"]
    leaks = rollout["leaks"]
    leaking_hosts = sum(1 for b in leaks.values() if b > 0)
    code, d = _compare(r.db, rollout["fixed"], rollout["leaking"])
    assert code == 1 and d["verdict"] == "regression"
    assert (d["baseline"]["hosts"], d["candidate"]["hosts"]) == (3, 3)
    leaked = {f["name"]: f for f in d["figures"]}["leaked"]
    assert leaked["mode"] == "paired" and leaked["verdict"] == "regression"
    assert (leaked["hosts"]["paired"], leaked["hosts"]["worse"]) == (3, leaking_hosts)
    pairs = {p["hostname"]: p["figures"]["leaked"] for p in d["pairs"]}
    assert pairs == {h: {"baseline": 0, "candidate": b, "delta": b,
                         "verdict": "regression" if b else "same"} for h, b in leaks.items()}
    assert d["reasons"][0].startswith("leaked regressed:")
    assert f"{leaking_hosts} of 3 paired hosts" in d["reasons"][0]
    assert "leak" in d["anomalies"]["new_kernel"]
    # The other direction: the fix, an improvement.
    code, d = _compare(r.db, rollout["leaking"], rollout["fixed"])
    assert code == 0 and d["verdict"] == "improvement"
    leaked = {f["name"]: f for f in d["figures"]}["leaked"]
    assert leaked["verdict"] == "improvement" and leaked["hosts"]["better"] == leaking_hosts
    assert "leak" in d["anomalies"]["gone"]


def test_every_figure_panel_of_the_dashboard_returns_data(rollout: dict[str, Any]) -> None:
    """Each panel's query, on the Prometheus that scraped the rollout, during the 5.10
    wave (when the leak panels have something to show) or after the 6.1 wave."""
    r: Rollout = rollout["r"]
    wait_for("the 6.1 boots to be scraped", lambda: _leaked(r.prom) == dict.fromkeys(HOSTS, 0.0), 60)
    empty = [expr for _, expr in _panels()
             if not rollout["old_panels"][expr] and not r.prom.query(_fill(expr))]
    # The panels that must stay empty, because what they show is unknown on these boots
    # and unknown is no sample rather than 0: the previous boot's reclaim (the host
    # dashboard's line, the fleet's worst losses against it), the previous boot being
    # 5.10's, which prints no "Freeing EFI boot services memory" line; and the fleet's
    # median kept, which needs the EFI memory map that only efi=debug or memblock=debug
    # boots print (these boot with neither).
    assert len(empty) == 3
    assert sum("memledger_previous_boot_efi_boot_services_bytes" in e for e in empty) == 2
    assert any('state="kept", stat="median"' in e for e in empty)
    assert len(_panels()) >= 25
    # The fleet daemon's per-kernel figures: the leaking boots of each release.
    got = {row["metric"]["kernel_release"]: float(row["value"][1]) for row in r.prom.query(
        'sum by (kernel_release) (memledger_fleet_leaking_boots{instance="fleet"})')}
    assert got == {rollout["leaking"]: sum(1.0 for b in rollout["leaks"].values() if b > 0),
                   rollout["fixed"]: 0.0}
