"""deploy/grafana/memledger.json, built with grafana-foundation-sdk (Grafana's own builders).

``make dashboards`` writes the file; a test checks the committed file is what this module
builds, and evaluates every panel expression against a real Prometheus. Host-mode metrics
are joined to ``memledger_boot_info`` on (instance, job), so every panel can be cut by
kernel release and firmware version; the fleet row reads a ``--fleet`` daemon's aggregates.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import VizOrientation
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

__all__ = ("UID", "build", "expressions", "render")

UID = "memledger-boot-memory"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every host-mode series carries the boot's kernel and firmware through this join.
INFO = 'memledger_boot_info{kernel_release=~"$kernel_release", firmware_version=~"$firmware"}'
BY_BOOT = f" * on (instance, job) group_left (kernel_release, firmware_version) {INFO}"
FLEET = 'kernel_release=~"$kernel_release", firmware_version=~"$firmware"'


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


def _variables(d: dashboard.Dashboard) -> dashboard.Dashboard:
    d = d.with_variable(dashboard.DatasourceVariable("datasource").label("Data source")
                        .type("prometheus"))
    for name, label, q in (
            ("kernel_release", "Kernel release", "label_values(memledger_boot_info, kernel_release)"),
            ("firmware", "Firmware version", "label_values(memledger_boot_info, firmware_version)")):
        d = d.with_variable(dashboard.QueryVariable(name).label(label).datasource(DS)
                            .query({"query": q, "refId": name}).multi(True).include_all(True)
                            .all_value(".*").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
    return d


def build() -> dashboard.Dashboard:
    d = (dashboard.Dashboard("memledger: boot memory").uid(UID)
         .tags(["memledger", "kernel", "efi"]).refresh("1m").time("now-7d", "now")
         .timezone("utc").editable())
    d = _variables(d)
    d = d.with_row(dashboard.Row("EFI boot services, by kernel release"))
    d = d.with_panel(_bars(
        "Reclaimed", "EFI boot-services memory the kernel gave back, mean per host.", "bytes",
        _q(f'avg by (kernel_release) (memledger_efi_boot_services_bytes{{state="reclaimed"}}{BY_BOOT})',
           "{{kernel_release}}")))
    d = d.with_panel(_bars(
        "Kept, by reason", "EFI boot-services memory the kernel kept, mean per host.", "bytes",
        _q(f"avg by (kernel_release, reason) (memledger_efi_boot_services_kept_bytes{BY_BOOT})",
           "{{kernel_release}} {{reason}}")))
    d = d.with_panel(_bars(
        "Leaked", "Counted in MemTotal but managed by no zone (the deferred-page leak), worst "
        "host.", "bytes",
        _q(f'max by (kernel_release) (memledger_efi_boot_services_bytes{{state="leaked"}}{BY_BOOT})',
           "{{kernel_release}}")))
    d = d.with_panel(_series(
        "Reclaimed over time", "Per host; a drop after a reboot is a regression.", "bytes",
        _q(f'memledger_efi_boot_services_bytes{{state="reclaimed"}}{BY_BOOT}',
           "{{instance}} {{kernel_release}}"),
        _q(f'memledger_previous_boot_efi_boot_services_bytes{{state="reclaimed"}}{BY_BOOT}',
           "{{instance}} previous boot", "B")))
    d = d.with_row(dashboard.Row("Below 1 MiB"))
    d = d.with_panel(_bars(
        "Low memory", "The first MiB: usable per firmware, reserved by the kernel, EFI boot "
        "services there, and freed (0 since v5.13).", "bytes",
        _q(f"avg by (kernel_release, state) (memledger_low_memory_bytes{BY_BOOT})",
           "{{kernel_release}} {{state}}")))
    d = d.with_panel(_stat(
        "Hosts that freed low memory", "Hosts whose current boot freed memory below 1 MiB.",
        "none", _q(f'count((memledger_low_memory_bytes{{state="freed"}}{BY_BOOT}) > 0) or vector(0)',
                   "hosts"), w=12))
    d = d.with_row(dashboard.Row("Anomalies and capture fidelity"))
    d = d.with_panel(_bars(
        "Anomalies", "Anomalies in the current boots' ledgers, by code.", "none",
        _q(f"sum by (code) (memledger_anomalies{BY_BOOT})", "{{code}}")))
    d = d.with_panel(_bars(
        "Capture fidelity", "Share of hosts whose capture had each source.", "percentunit",
        _q(f"avg by (source) (memledger_capture_fidelity{BY_BOOT})", "{{source}}")))
    d = d.with_row(dashboard.Row("Ingest health"))
    d = d.with_panel(_series(
        "Ingest results", "Capture files per second, by result.", "ops",
        _q("sum by (result) (rate(memledger_ingest_total[$__rate_interval]))", "{{result}}"),
        w=12))
    d = d.with_panel(_stat(
        "Since the last ingest", "Oldest of the hosts' last stored capture.", "s",
        _q("time() - min(memledger_last_ingest_timestamp_seconds)", "age")))
    d = d.with_panel(_stat(
        "Stores down", "Daemons that could not read their database at the last scrape.", "none",
        _q("count(memledger_store_up == 0) or vector(0)", "down")))
    d = d.with_row(dashboard.Row("Fleet store (a --fleet daemon)"))
    d = d.with_panel(_bars(
        "Median reclaimed, by kernel and firmware", "p10/median/p90 come from the central "
        "store's boots.", "bytes",
        _q(f'memledger_fleet_efi_boot_services_bytes{{state="reclaimed", stat="median", {FLEET}}}',
           "{{kernel_release}} {{firmware_version}}")))
    d = d.with_panel(_bars(
        "Boots and leaking boots", "Stored boots per kernel release, and those with a leak.",
        "none",
        _q(f"sum by (kernel_release) (memledger_fleet_boots{{{FLEET}}})", "{{kernel_release}} boots"),
        _q(f"sum by (kernel_release) (memledger_fleet_leaking_boots{{{FLEET}}})",
           "{{kernel_release}} leaking", "B")))
    return d


def render() -> str:
    """The dashboard JSON, as committed in deploy/grafana/memledger.json."""
    data = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build().build()))
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


if __name__ == "__main__":
    print(render(), end="")
