"""deploy/grafana/memledger-fleet.json and memledger-host.json, built with
grafana-foundation-sdk (Grafana's own builders).

``make dashboards`` writes the files; a test checks the committed files are what this
module builds, and evaluates every panel expression against a real Prometheus.

- The **fleet** dashboard reads a ``--fleet`` daemon's aggregates of the central store, per
  kernel release and firmware (its variables come from them, so a fleet-only setup has
  them), and, where host daemons are scraped too, the worst hosts and their daemons'
  health. No panel draws a series per host: at 5 000 hosts that is 5 000 lines; where hosts
  matter it shows the worst 10.
- The **host** dashboard shows one host's current boot and daemon (variable ``instance``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import VizOrientation
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

__all__ = ("BUILDERS", "FLEET_UID", "HOST_UID", "build_fleet", "build_host", "expressions", "render")

FLEET_UID = "memledger-fleet"
HOST_UID = "memledger-host"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The fleet aggregates of the selected releases and firmware; several fleet daemons on one
# store export the same figures, so each is taken once (max by its own labels).
FLEET = 'kernel_release=~"$kernel_release", firmware_version=~"$firmware"'
# A host daemon's series carry the boot's kernel through this join.
BY_BOOT = (' * on (instance, job) group_left (kernel_release) '
           'memledger_boot_info{kernel_release=~"$kernel_release"}')
HOST = 'instance=~"$instance"'
WORST = 10
# The fleet families' own labels: max by these takes each figure once.
KEYS = "kernel_release, firmware_vendor, firmware_version"
RELEASE_FIRMWARE = "{{kernel_release}} {{firmware_vendor}} {{firmware_version}}"


def _q(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def _bars(title: str, desc: str, unit: str, *queries: prometheus.Dataquery,
          w: int = 12, h: int = 8) -> bargauge.Panel:
    p = (bargauge.Panel().title(title).description(desc).unit(unit).datasource(DS)
         .height(h).span(w).orientation(VizOrientation.HORIZONTAL)
         .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"])))
    for q in queries:
        p = p.with_target(q.instant())
    return p


def _series(title: str, desc: str, unit: str, *queries: prometheus.Dataquery,
            w: int = 12, h: int = 8) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(desc).unit(unit).datasource(DS)
         .height(h).span(w))
    for q in queries:
        p = p.with_target(q)
    return p


def _stat(title: str, desc: str, unit: str, q: prometheus.Dataquery, w: int = 6) -> stat.Panel:
    return (stat.Panel().title(title).description(desc).unit(unit).datasource(DS)
            .height(4).span(w).reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
            .with_target(q.instant()))


def _query_variable(name: str, label: str, query: str, multi: bool = True
                    ) -> dashboard.QueryVariable:
    v = (dashboard.QueryVariable(name).label(label).datasource(DS)
         .query({"query": query, "refId": name}).refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
    return v.multi(True).include_all(True).all_value(".*") if multi else v


def _fleet(stat_: str, figure: str, state: str) -> str:
    return (f'max by ({KEYS}) (memledger_fleet_{figure}_bytes'
            f'{{state="{state}", stat="{stat_}", {FLEET}}})')


def _per_release(metric: str) -> str:
    return f"sum by (kernel_release) (max by ({KEYS}) ({metric}{{{FLEET}}}))"


def build_fleet() -> dashboard.Dashboard:
    d = (dashboard.Dashboard("memledger: fleet").uid(FLEET_UID)
         .tags(["memledger", "kernel", "efi", "fleet"]).refresh("1m").time("now-7d", "now")
         .timezone("utc").editable())
    d = d.with_variable(dashboard.DatasourceVariable("datasource").label("Data source")
                        .type("prometheus"))
    d = d.with_variable(_query_variable("kernel_release", "Kernel release",
                                        "label_values(memledger_fleet_boots, kernel_release)"))
    d = d.with_variable(_query_variable("firmware", "Firmware version",
                                        "label_values(memledger_fleet_boots, firmware_version)"))
    d = d.with_row(dashboard.Row("EFI boot services, by kernel release and firmware "
                                 "(the central store, a --fleet daemon)"))
    d = d.with_panel(_bars(
        "Median reclaimed", "EFI boot-services memory the kernel gave back: the median boot "
        "of each release on each firmware.", "bytes",
        _q(_fleet("median", "efi_boot_services", "reclaimed"),
           RELEASE_FIRMWARE)))
    d = d.with_panel(_bars(
        "Reclaimed: p10, median, p90", "The spread over each release's boots; a low p10 is a "
        "minority of boots that gave back less.", "bytes",
        _q(f'max by ({KEYS}, stat) (memledger_fleet_efi_boot_services_bytes'
           f'{{state="reclaimed", {FLEET}}})', RELEASE_FIRMWARE + " {{stat}}")))
    d = d.with_panel(_bars(
        "Median kept", "EFI boot-services memory the kernel kept on purpose (or by mistake), "
        "median boot.", "bytes",
        _q(_fleet("median", "efi_boot_services", "kept"), RELEASE_FIRMWARE)))
    d = d.with_panel(_bars(
        "Boots, hosts and leaking boots", "Stored boots and hosts per release, and the boots "
        "whose ledger shows the deferred-page leak.", "none",
        _q(_per_release("memledger_fleet_boots"), "{{kernel_release}} boots"),
        _q(_per_release("memledger_fleet_hosts"), "{{kernel_release}} hosts", "B"),
        _q(_per_release("memledger_fleet_leaking_boots"), "{{kernel_release}} leaking", "C")))
    d = d.with_panel(_bars(
        "Boots left out, by reason", "Boots that do not measure some figures, left out of "
        "them here as compare leaves them out (efi=debug keeps every boot-services page; a "
        "kexec boot inherits its map; a truncated log saw part of the boot).", "none",
        _q(f"sum by (kernel_release, reason) (max by ({KEYS}, reason) "
           f"(memledger_fleet_left_out_boots{{{FLEET}}}))",
           "{{kernel_release}} {{reason}}")))
    d = d.with_row(dashboard.Row("Below 1 MiB"))
    d = d.with_panel(_bars(
        "Median reserved below 1 MiB", "What the kernel keeps of the first MiB (all of it "
        "since v5.13), median boot.", "bytes",
        _q(_fleet("median", "low_memory", "reserved"), RELEASE_FIRMWARE)))
    d = d.with_panel(_bars(
        "Boots that freed low memory", "0 since v5.13 (f1d4d47c5851).", "none",
        _q(_per_release("memledger_fleet_low_memory_freed_boots"), "{{kernel_release}}")))
    d = d.with_row(dashboard.Row(f"The worst {WORST} hosts (host daemons)"))
    d = d.with_panel(_bars(
        "Leaked", "Hosts whose current boot leaked the most EFI boot-services memory.",
        "bytes",
        _q(f'topk({WORST}, memledger_efi_boot_services_bytes{{state="leaked"}}{BY_BOOT})',
           "{{instance}} {{kernel_release}}")))
    d = d.with_panel(_bars(
        "Reclaimed less than the boot before", "Hosts whose current boot gave back the "
        "least compared with their previous boot.", "bytes",
        _q(f'topk({WORST}, (memledger_previous_boot_efi_boot_services_bytes{{state="reclaimed"}}'
           f' - on (instance, job) memledger_efi_boot_services_bytes{{state="reclaimed"}})'
           f'{BY_BOOT})', "{{instance}} {{kernel_release}}")))
    d = d.with_panel(_bars(
        "Hosts by kernel release", "Host daemons per release of their current boot (the "
        "rollout's progress).", "none",
        _q('count by (kernel_release) (memledger_boot_info{kernel_release=~"$kernel_release"})',
           "{{kernel_release}}")))
    d = d.with_panel(_bars(
        "Hosts without a complete kernel log", "Per release: the ledger cannot say what "
        "these boots reclaimed (raise log_buf_len).", "none",
        _q(f'count by (kernel_release) ((memledger_capture_fidelity{{source="kernel_log_complete"}}'
           f' == 0){BY_BOOT}) or count by (kernel_release) '
           f'(memledger_boot_info{{kernel_release=~"$kernel_release"}}) * 0',
           "{{kernel_release}}")))
    d = d.with_row(dashboard.Row("Ingest health"))
    d = d.with_panel(_series(
        "Ingest results", "Capture files stored per second, every daemon, by result.", "ops",
        _q("sum by (result) (rate(memledger_ingest_total[$__rate_interval]))", "{{result}}")))
    d = d.with_panel(_series(
        "Files the fleet daemons received", "POSTs to /api/v1/captures per second, by answer.",
        "ops",
        _q("sum by (result) (rate(memledger_received_total[$__rate_interval]))", "{{result}}")))
    d = d.with_panel(_stat(
        "Daemons with failed files", "Daemons that moved a file to failed/ in the last hour.",
        "none", _q('count(increase(memledger_ingest_total{result="failed"}[1h]) > 0) '
                   "or vector(0)", "daemons")))
    d = d.with_panel(_stat(
        "Stores down", "Daemons that could not use their database at the last scrape.", "none",
        _q("count(memledger_store_up == 0) or vector(0)", "down")))
    d = d.with_panel(_stat(
        "Oldest file waiting", "The oldest file waiting in any daemon's spool.", "s",
        _q("max(memledger_spool_oldest_waiting_age_seconds)", "age")))
    d = d.with_panel(_stat(
        "Fleet aggregates' age", "Since a fleet daemon last read the central store.", "s",
        _q("time() - max(memledger_fleet_refresh_timestamp_seconds)", "age")))
    d = d.with_panel(_stat(
        "Files waiting to be forwarded", "In every host's outbox (0 when no host forwards).",
        "none", _q("sum(memledger_forward_backlog_files) or vector(0)", "files")))
    d = d.with_panel(_stat(
        "Hosts sharing a machine id", "Clones of one disk image, kept apart by sender.", "none",
        _q("max(memledger_fleet_shared_machine_id_hosts)", "hosts")))
    return d


def build_host() -> dashboard.Dashboard:
    d = (dashboard.Dashboard("memledger: host").uid(HOST_UID)
         .tags(["memledger", "kernel", "efi"]).refresh("1m").time("now-7d", "now")
         .timezone("utc").editable())
    d = d.with_variable(dashboard.DatasourceVariable("datasource").label("Data source")
                        .type("prometheus"))
    d = d.with_variable(_query_variable("instance", "Host",
                                        "label_values(memledger_boot_info, instance)",
                                        multi=False))
    d = d.with_row(dashboard.Row("The current boot"))
    d = d.with_panel(_bars(
        "EFI boot services", "What firmware left, what the kernel gave back, kept, and "
        "leaked; the legend names the kernel.", "bytes",
        _q(f"memledger_efi_boot_services_bytes{{{HOST}}} * on (instance, job) group_left "
           f"(kernel_release) memledger_boot_info", "{{state}} ({{kernel_release}})")))
    d = d.with_panel(_bars(
        "Kept, by reason", "EFI boot-services memory the kernel kept.", "bytes",
        _q(f"memledger_efi_boot_services_kept_bytes{{{HOST}}}", "{{reason}}")))
    d = d.with_panel(_series(
        "Reclaimed, this boot and the boot before", "A drop after a reboot is a regression.",
        "bytes",
        _q(f'memledger_efi_boot_services_bytes{{state="reclaimed", {HOST}}}', "this boot"),
        _q(f'memledger_previous_boot_efi_boot_services_bytes{{state="reclaimed", {HOST}}}',
           "previous boot", "B")))
    d = d.with_panel(_bars(
        "Below 1 MiB", "Usable per firmware, reserved by the kernel, EFI boot services there, "
        "and freed (0 since v5.13).", "bytes",
        _q(f"memledger_low_memory_bytes{{{HOST}}}", "{{state}}")))
    d = d.with_panel(_bars(
        "Kernel accounting", "The kernel's own memory accounting; unexplained_residual is 0 "
        "on a healthy kernel.", "bytes",
        _q(f"memledger_kernel_accounting_bytes{{{HOST}}}", "{{what}}")))
    d = d.with_panel(_bars(
        "Anomalies", "The ledger's anomalies of this boot, by code.", "none",
        _q(f"memledger_anomalies{{{HOST}}}", "{{code}}")))
    d = d.with_panel(_bars(
        "Capture fidelity", "1 for each source the capture had.", "none",
        _q(f"memledger_capture_fidelity{{{HOST}}}", "{{source}}")))
    d = d.with_row(dashboard.Row("The daemon"))
    d = d.with_panel(_series(
        "Ingest results", "Capture files stored per second, by result.", "ops",
        _q(f"sum by (result) (rate(memledger_ingest_total{{{HOST}}}[$__rate_interval]))",
           "{{result}}")))
    d = d.with_panel(_stat(
        "Since the last ingest", "Since this daemon last stored a capture (its boot's, at "
        "start; then whatever a collector or capture drops in the spool).", "s",
        _q(f"time() - memledger_last_ingest_timestamp_seconds{{{HOST}}}", "age")))
    d = d.with_panel(_stat(
        "Store up", "1 when the daemon can use its database.", "none",
        _q(f"memledger_store_up{{{HOST}}}", "up")))
    d = d.with_panel(_stat(
        "Oldest file waiting", "In this daemon's spool (0 when none waits).", "s",
        _q(f"memledger_spool_oldest_waiting_age_seconds{{{HOST}}}", "age")))
    return d


BUILDERS = {"memledger-fleet.json": build_fleet, "memledger-host.json": build_host}


def render(name: str) -> str:
    """A dashboard's JSON, as committed in deploy/grafana/NAME."""
    data = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(BUILDERS[name]().build()))
    data["id"] = None  # provisioned dashboards are found by uid
    for var in data["templating"]["list"]:
        var.pop("id", None)  # the builder's all-zero placeholder
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def expressions(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel in a dashboard model."""
    out: list[tuple[str, str]] = []
    for panel in model.get("panels", []):
        for target in panel.get("targets", []) or []:
            if target.get("expr"):
                out.append((panel.get("title", ""), target["expr"]))
    return out


def main(argv: list[str]) -> int:
    """Write every dashboard into the directory given (deploy/grafana)."""
    if len(argv) != 1:
        print("usage: python -m memledger.exporters.dashboard DIR", file=sys.stderr)
        return 2
    for name in BUILDERS:
        (Path(argv[0]) / name).write_text(render(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
