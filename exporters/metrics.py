"""Prometheus metrics of the daemon, built from the store at scrape time.

:class:`StoreCollector` makes new metric families on every collect, with no sample time
stamps, as Prometheus's exporter guidelines ask. Unknown ledger figures are
left out, never exported as 0. No boot id, address or capture id is a label; host and
fleet labels come from Prometheus target labels.

- **Host mode** (the default): the current boot of this machine (the newest capture of
  its machine id, else of the machine captured last), and the previous boot's
  EFI boot-services figures, so that a rule can compare the two.
- **Fleet mode** (``--fleet``, on a central store): aggregates per kernel release and
  firmware version, and never one series per host.

Only the daemon's own work (ingest results) is instrumented directly.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from memledger.ledger.anomalies import CODES
from memledger.ledger.boot_services import KEPT_REASONS
from memledger.ledger.measures import REASONS, measures
from memledger.ledger.model import LedgerDoc
from memledger.ledger.stats import summary
from memledger.spool.reader import Spool
from memledger.store.db import describe_error
from memledger.store.migrate import HEAD, schema_state
from memledger.store.queries import STORE_COUNTS, FleetGroup, StoredBoot, running_and_previous
from memledger.store.runtime import RuntimeTotals, runtime_totals
from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

__all__ = ("MAX_LABEL_CHARS", "RESULTS", "IngestMetrics", "SpoolCollector", "StoreCollector",
           "fleet_metrics", "label")

RESULTS = ("ok", "duplicate", "failed")
BS_STATES = ("total", "reclaimed", "kept", "leaked")
LOW_STATES = ("usable", "reserved", "boot_services", "freed")
ACCOUNTING = ("boot_reserved", "present", "managed", "memtotal", "residual",
              "lazy_uninitialised", "silent_freed", "unexplained_residual")
_STATS = ("p10", "median", "p90")
_CACHE_NOTE = " Read from the store at scrape time."
_FLEET_NOTE = " Read at the last fleet refresh (memledger_fleet_refresh_timestamp_seconds)."
# The store's schema revision: a scrape reads it first, so a store migrated by a later
# memledger (or not yet by this one) says store_up 0 instead of being half read.
_REVISION = text("SELECT version_num FROM alembic_version")
# memledger_store_down_reason's label: why the last scrape could not read the store.
DOWN_REASONS = ("unreachable", "schema_behind", "schema_newer")
log = logging.getLogger("memledger.metrics")


# Label values come from capture files; a real one (a release, a BIOS version, a kernel
# function) is far shorter. Longer ones are cut, so that no file can swell every scrape,
# and end in a digest of the whole value, so that two cut values stay two series.
MAX_LABEL_CHARS = 128


def label(value: str | None) -> str:
    """A label value: "" for unknown, at most MAX_LABEL_CHARS."""
    value = value or ""
    if len(value) <= MAX_LABEL_CHARS:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:8]
    return f"{value[:MAX_LABEL_CHARS - 9]}…{digest}"


def _g(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc + _CACHE_NOTE, labels=labels)


def _known(name: str, doc: str, label: str, keys: tuple[str, ...],
           values: Mapping[str, object], suffix: str = "_bytes") -> GaugeMetricFamily:
    """One sample per key whose value is known (None stays out: unknown is not 0)."""
    m = _g(name, doc, [label])
    for key in keys:
        value = values.get(key + suffix)
        if isinstance(value, int) and not isinstance(value, bool):
            m.add_metric([key], value)
    return m


def _fidelity(doc: LedgerDoc) -> dict[str, bool]:
    f = doc["fidelity"]
    out = {k: bool(v) for k, v in f["sources"].items()}
    out["kernel_log_complete"] = bool(f["log_complete"])
    out["memblock_debug"] = bool(f["memblock_debug"])
    out["efi_memmap"] = bool(f["efi_memmap_printed"])
    out["boot_trace"] = bool(f["boot_trace"])
    return out


def _host_metrics(current: StoredBoot, previous: StoredBoot | None) -> Iterator[Metric]:
    doc = current["document"]
    efi = {True: "true", False: "false", None: "unknown"}[current["efi"]]
    info = InfoMetricFamily("memledger_boot", "The current boot: kernel and firmware." + _CACHE_NOTE)
    info.add_metric([], {"kernel_release": label(current["kernel_release"]), "efi": efi,
                         "firmware_vendor": label(current["firmware_vendor"]),
                         "firmware_version": label(current["firmware_version"]),
                         "product": label(current["product"]),
                         "loader": label(doc["kernel"]["loader"])})
    yield info
    ts = _g("memledger_boot_captured_timestamp_seconds", "When the current boot was captured.")
    ts.add_metric([], current["captured_at"].timestamp())
    yield ts

    bs = doc["efi_boot_services"]
    yield _known("memledger_efi_boot_services_bytes", "EFI boot-services memory of the current "
                 "boot: what firmware left (total), what the kernel gave back, kept, and leaked.",
                 "state", BS_STATES, bs)
    yield _known("memledger_efi_boot_services_kept_bytes", "EFI boot-services memory the "
                 "current boot kept, by reason.", "reason", KEPT_REASONS,
                 bs["kept_by_reason"] or {}, suffix="")
    yield _known("memledger_previous_boot_efi_boot_services_bytes", "The same figures for this "
                 "machine's boot before the current one.", "state", BS_STATES,
                 previous["document"]["efi_boot_services"] if previous is not None else {})
    if previous is not None:
        pinfo = InfoMetricFamily("memledger_previous_boot", "The previous boot's kernel." + _CACHE_NOTE)
        pinfo.add_metric([], {"kernel_release": label(previous["kernel_release"])})
        yield pinfo

    yield _known("memledger_low_memory_bytes", "Memory below 1 MiB in the current boot: usable "
                 "per firmware, reserved by the kernel, EFI boot services, and freed.", "state",
                 LOW_STATES, doc["low_memory"])
    acct = doc["kernel_accounting"]
    m = _g("memledger_kernel_freed_bytes", "Memory the current boot's kernel freed, by its "
           "'Freeing <what> memory' lines.", ["what"])
    for what, n in sorted((acct["freed_by_name"] or {}).items()):
        m.add_metric([label(what)], n)
    yield m
    yield _known("memledger_kernel_accounting_bytes", "The kernel's own memory accounting of "
                 "the current boot (boot_reserved = present - managed at the Memory: line). "
                 "residual = boot_reserved - (present - managed) - the later Freeing lines, 0 on a "
                 "healthy kernel. unexplained_residual = residual + lazy_uninitialised - "
                 "(silent_freed less the deferred-init leak): silent_freed are memblock_free_late "
                 "frees, which print no Freeing line; lazy_uninitialised are the pages "
                 "deferred_init=lazy had not initialised yet (deferred init still in progress: "
                 "residual is negative by them and shrinks as allocations take them). Absent "
                 "when unknown: unexplained_residual when nothing could explain the residual.",
                 "what", ACCOUNTING, acct)
    counts = dict.fromkeys(CODES, 0)
    for a in doc["anomalies"]:
        counts[a["code"]] = counts.get(a["code"], 0) + 1
    m = _g("memledger_anomalies", "Anomalies in the current boot's ledger, by code.", ["code"])
    for code, n in counts.items():
        m.add_metric([code], n)
    yield m
    m = _g("memledger_capture_fidelity", "1 when the current boot's capture had this source, "
           "else 0.", ["source"])
    for source, present in sorted(_fidelity(doc).items()):
        m.add_metric([source], int(present))
    yield m


# The functions the probe back ends report as freeing (tracer/probes.py).
_PROBED_FREE = ("free_reserved_area", "crash_free_reserved_phys_range", "online_pages")


def _runtime_metrics(t: RuntimeTotals) -> Iterator[Metric]:
    """The current boot's runtime events from ``memledger collect``; nothing at all when
    no collector reported for this boot (unknown, not 0)."""
    if not t.events:
        return
    probed = any(source != "kmsg" for source in t.events)
    m = CounterMetricFamily("memledger_runtime_freed_bytes", "Memory freed to the page "
                            "allocator after boot in the current boot, by kernel function, as "
                            "the collector's probes saw it." + _CACHE_NOTE, labels=["function"])
    freed = dict.fromkeys(_PROBED_FREE, 0) if probed else {}
    freed.update(t.freed)
    for function, n in sorted(freed.items()):
        m.add_metric([label(function)], n)
    yield m
    m = CounterMetricFamily("memledger_runtime_offlined_bytes", "Memory taken offline after "
                            "boot in the current boot (memory hotplug)." + _CACHE_NOTE,
                            labels=["function"])
    offlined = {"offline_pages": 0} if probed else {}
    offlined.update(t.offlined)
    for function, n in sorted(offlined.items()):
        m.add_metric([label(function)], n)
    yield m
    g = _g("memledger_runtime_managed_change_bytes", "Net change of the zones' managed memory "
           "after boot in the current boot, by the function that called "
           "adjust_managed_page_count.", ["caller"])
    for caller, n in sorted(t.managed.items()):
        g.add_metric([label(caller)], n)
    yield g
    m = CounterMetricFamily("memledger_runtime_kernel_log_freed_bytes", "What the kernel "
                            "printed in 'Freeing <what> memory' lines after boot in the current "
                            "boot." + _CACHE_NOTE, labels=["what"])
    for what, n in sorted(t.logged.items()):
        m.add_metric([label(what.removeprefix("Freeing "))], n)
    yield m
    m = CounterMetricFamily("memledger_runtime_events", "Runtime events stored for the current "
                            "boot, by collector source." + _CACHE_NOTE, labels=["source"])
    d = CounterMetricFamily("memledger_runtime_dropped", "Records a collector source lost "
                            "in the current boot (kernel-log records overwritten before they "
                            "were read, lost perf samples, trace-buffer overruns)." + _CACHE_NOTE,
                            labels=["source"])
    for source in sorted(t.events):
        m.add_metric([source], t.events[source])
        d.add_metric([source], t.dropped.get(source, 0))
    yield m
    yield d


# Fleet family → (what, its label, label value → (ledger column, compare's figure name)).
_FLEET_FIGURES = {
    "memledger_fleet_efi_boot_services_bytes": ("EFI boot-services memory", "state",
                                                {s: (f"bs_{s}_bytes", s) for s in BS_STATES}),
    "memledger_fleet_low_memory_bytes": ("Memory below 1 MiB", "state",
                                         {s: (f"low_{s}_bytes", f"low_{s}") for s in LOW_STATES}),
}


def _counting(g: FleetGroup, column: str, figure: str) -> list[Any]:
    """The values of ``column`` from the boots that measure ``figure``: the boots compare
    leaves out of it (ledger/measures.py) are left out here too."""
    return [v for v, why in zip(g.columns[column], g.whys, strict=True) if measures(figure, why)]


def fleet_metrics(groups: list[FleetGroup], n_hosts: int | None = None,
                  stored_boots: int | None = None) -> Iterator[Metric]:
    """The fleet families over the boots in ``groups`` (every stored boot, or those of the
    window), grouped by release and firmware; the store's own counts when given (the
    boots' defaults to those in ``groups``). Each figure counts only the boots that
    measure it, as compare does; ``memledger_fleet_left_out_boots`` says how many were
    left out of some figures, and why."""
    keys = ["kernel_release", "firmware_vendor", "firmware_version"]
    n_boots = _g("memledger_fleet_boots", "Stored boots per kernel release and firmware.", keys)
    hosts_g = _g("memledger_fleet_hosts", "Hosts with stored boots per kernel release and "
                 "firmware.", keys)
    leaking = _g("memledger_fleet_leaking_boots", "Boots whose ledger shows an EFI "
                 "boot-services leak (of those that measure it: not efi=debug, EFI).", keys)
    anomalous = _g("memledger_fleet_anomalous_boots", "Boots with at least one anomaly (of "
                   "those that measure it: not efi=debug, kexec or a truncated log).", keys)
    lowfreed = _g("memledger_fleet_low_memory_freed_boots", "Boots that freed memory below "
                  "1 MiB (of those that measure it).", keys)
    left_out = _g("memledger_fleet_left_out_boots", "Boots left out of some figures, by "
                  "reason, as compare leaves them out: " + "; ".join(
                      f"{k}: {v}" for k, v in REASONS.items()) + ".", [*keys, "reason"])
    figures = {name: _g(name, f"{what} per kernel release and firmware: p10, median and p90 "
                        "over the boots where it is known and that measure it (as compare "
                        "counts them).", [*keys, label, "stat"])
               for name, (what, label, _) in _FLEET_FIGURES.items()}
    for g in groups:
        lv = [label(g.kernel_release), label(g.firmware_vendor), label(g.firmware_version)]
        n_boots.add_metric(lv, len(g.host_ids))
        hosts_g.add_metric(lv, len(set(g.host_ids)))
        leaking.add_metric(lv, sum(1 for v in _counting(g, "bs_leaked_bytes", "leaked")
                                   if (v or 0) > 0))
        anomalous.add_metric(lv, sum(1 for v in _counting(g, "anomaly_count", "anomalies")
                                     if v > 0))
        lowfreed.add_metric(lv, sum(1 for v in _counting(g, "low_freed_bytes", "low_freed")
                                    if (v or 0) > 0))
        for reason in REASONS:
            left_out.add_metric([*lv, reason], sum(1 for why in g.whys if reason in why))
        for name, (_, _, columns) in _FLEET_FIGURES.items():
            for label_value, (column, figure) in columns.items():
                s = summary(_counting(g, column, figure))
                if s["n"]:
                    for stat in _STATS:
                        figures[name].add_metric([*lv, label_value, stat], s[stat] or 0)
    yield from (n_boots, hosts_g, leaking, anomalous, lowfreed, left_out, *figures.values())
    if n_hosts is not None:
        # Rendered with the fleet figures, not at the scrape: the HELP says so.
        yield _plain("memledger_store_boots", "Boots held in the store.",
                     sum(len(g.host_ids) for g in groups) if stored_boots is None else stored_boots,
                     _FLEET_NOTE)
        yield _plain("memledger_store_hosts", "Hosts with boots in the store.", n_hosts,
                     _FLEET_NOTE)


class StoreCollector(Collector):
    """What the store holds, read at scrape time. In fleet mode only ``memledger_store_up``
    is: the rest comes from :class:`~memledger.exporters.fleetview.FleetView`."""

    def __init__(self, engine: Engine, machine_id: str | None = None, fleet: bool = False,
                 boot_id: str | None = None,
                 said_elsewhere: Callable[[], bool] = lambda: False) -> None:
        self.engine = engine
        # True while the daemon itself has logged that the store cannot be used: a scrape
        # then says nothing more.
        self.said_elsewhere = said_elsewhere
        self.machine_id = machine_id
        self.boot_id = boot_id  # the running boot: "current" means this one, whatever its date
        self.fleet = fleet
        self._down: str | None = None  # why the last scrape could not read the store

    def _schema(self, conn: Connection) -> str | None:
        """Why the store's schema is not this memledger's (None when it is)."""
        try:
            rev = conn.execute(_REVISION).scalar_one_or_none()
        except SQLAlchemyError:
            conn.rollback()
            rev = None
        if rev == HEAD:
            return None
        state = schema_state(self.engine)
        if state == "newer":
            return (f"schema_newer: the store's schema {rev} is newer than this memledger's "
                    f"{HEAD}; upgrade memledger")
        return (f"schema_behind: the store's schema is {rev or 'not there'}, this memledger "
                f"needs {HEAD}; run `memledger db upgrade`")

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("memledger_store_up", "1 when the store could be read at this "
                               "scrape and its schema is this memledger's, else 0.")
        metrics: list[Metric] = []
        why: str | None = None
        try:
            with self.engine.connect() as conn:
                why = self._schema(conn)
                if why is None and not self.fleet:  # fleet mode: only whether it can be read
                    n_boots, n_hosts = conn.execute(STORE_COUNTS).one()
                    metrics = [_plain("memledger_store_boots", "Boots held in the store.", n_boots),
                               _plain("memledger_store_hosts", "Hosts with boots in the store.",
                                      n_hosts)]
                    current, previous = running_and_previous(conn, self.machine_id, self.boot_id)
                    if current is not None:
                        metrics.extend(_host_metrics(current, previous))
                        metrics.extend(_runtime_metrics(runtime_totals(
                            conn, current["machine_id"], current["boot_id"])))
        except SQLAlchemyError as exc:
            why = "unreachable: " + describe_error(self.engine.url, exc)
        if why is not None:
            # One line when the store cannot be read, and again only when the reason
            # changes or the store comes back: not one a scrape while it is down.
            if why != self._down and not self.said_elsewhere():
                log.warning("metrics: cannot read the store: %s", why)
            self._down = why
            up.add_metric([], 0)
            yield up
            reason = GaugeMetricFamily("memledger_store_down_reason", "Why the store could not "
                                       "be read at this scrape (1 for the reason; the log and "
                                       "the landing page say more).", labels=["reason"])
            for r in DOWN_REASONS:
                reason.add_metric([r], 1 if why.startswith(r + ":") else 0)
            yield reason
            return
        if self._down is not None:
            if not self.said_elsewhere():
                log.info("metrics: the store can be read again")
            self._down = None
        up.add_metric([], 1)
        yield up
        yield from metrics


def _plain(name: str, doc: str, value: float, note: str = _CACHE_NOTE) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc + note, value=value)


class SpoolCollector(Collector):
    """How many files wait in the spool (a file being ingested included) and the age of
    the oldest, read at scrape time: a backlog that only grows, or a file that never
    leaves, shows here whatever the daemon's own counters say."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def collect(self) -> Iterator[Metric]:
        count, oldest = self.spool.backlog()
        yield _plain("memledger_spool_waiting_files", "Files waiting in the spool, the one "
                     "being ingested included.", count, "")
        yield _plain("memledger_spool_oldest_waiting_age_seconds", "Age of the oldest file "
                     "waiting in the spool (by its modification time); 0 when none waits.",
                     max(0.0, time.time() - oldest) if oldest is not None else 0.0, "")


class IngestMetrics(Collector):
    """Counters of the daemon's own ingest work, and when it last stored a capture (absent
    until the first one: unknown is not 0)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # _created says nothing here
        self.total = Counter("memledger_ingest", "Capture files ingested, by result "
                             "(ok: stored or replaced; duplicate: already stored or older; "
                             "failed: refused or unreadable).", ["result"], registry=registry)
        for result in RESULTS:
            self.total.labels(result)
        self.last: float | None = None
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        if self.last is not None:
            yield GaugeMetricFamily("memledger_last_ingest_timestamp_seconds",
                                    "When the daemon last stored a capture (Unix time).",
                                    value=self.last)

    def record(self, result: str) -> None:
        self.total.labels(result).inc()
        if result == "ok":
            self.last = time.time()
