"""Prometheus metrics of the daemon.

The store's data is read by :class:`StoreCollector` at scrape time (metrics built anew on
every collect, no sample time stamps). Only the daemon's own work (ingest results) is
instrumented directly, as the exporter guidelines ask.
"""

from __future__ import annotations

from collections.abc import Iterable

from memledger.store.schema import boots, hosts
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

__all__ = ("IngestMetrics", "StoreCollector")

RESULTS = ("ok", "duplicate", "failed")


class StoreCollector(Collector):
    """What the store holds, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self.engine.connect() as conn:
            n_boots = conn.execute(select(func.count()).select_from(boots)).scalar_one()
            n_hosts = conn.execute(select(func.count()).select_from(hosts)).scalar_one()
        yield GaugeMetricFamily("memledger_store_boots", "Boots held in the store.", value=n_boots)
        yield GaugeMetricFamily("memledger_store_hosts", "Hosts with boots in the store.",
                                value=n_hosts)


class IngestMetrics:
    """Counters of the daemon's own ingest work."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter("memledger_ingest", "Capture files ingested, by result "
                             "(ok: stored or replaced; duplicate: already stored or older; "
                             "failed: refused or unreadable).", ["result"], registry=registry)
        for result in RESULTS:
            self.total.labels(result)
        self.last = Gauge("memledger_last_ingest_timestamp_seconds",
                          "When the last capture was stored (Unix time).", registry=registry)

    def record(self, result: str) -> None:
        self.total.labels(result).inc()
        if result == "ok":
            self.last.set_to_current_time()
