"""Fleet-mode metrics, rendered ahead of the scrapes that read them.

On a central store the fleet metrics summarise every stored boot: 100 000 boots take
about a second of queries and order statistics (BENCHMARKS.md), far more than a scrape
may (Prometheus's default timeout is 10 s, and the target here is 50 ms at p99). So a
thread renders them, in the exposition format, whenever the daemon has stored a boot and
otherwise every ``--fleet.refresh`` (for other writers to the same store), and a scrape
appends the last rendering to the live metrics. A scrape that follows this daemon's own
ingest waits for the rendering that includes it, so what it reports is never older than
what this daemon stored. ``memledger_fleet_refresh_timestamp_seconds`` says how fresh the
figures are, as Prometheus's exporter guidelines ask of cached metrics.

While boots keep arriving (a reboot wave: 100 a second) a rendering follows the last one
after ``min_gap_s`` at the soonest, unless a scrape waits for it: each rendering reads
every boot, and one after each store took a seventh of a fleet daemon's time and grew
with the store.

With a window (``--fleet.window``), only the boots captured within it, counted back from
each rendering, make the fleet families; ``memledger_fleet_window_seconds`` says it (0:
every stored boot), and ``memledger_store_boots``/``…_hosts`` still count the whole store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from memledger.exporters.metrics import fleet_metrics
from memledger.store.queries import SHARED_MACHINE_ID_HOSTS, STORE_COUNTS, fleet_rows
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

__all__ = ("FleetView",)

log = logging.getLogger("memledger.fleet")


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


class FleetView:
    """The fleet metrics' last rendering, and the thread that keeps it current."""

    def __init__(self, engine: Engine, interval_s: float = 60.0, window_s: float = 0.0,
                 min_gap_s: float = 5.0) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.min_gap_s = min_gap_s
        self.window_s = window_s  # only boots captured this recently count; 0: every one
        self._cond = threading.Condition()
        self._wanted = 1   # bumped by changed(); a rendering is current when it saw this
        self._built = 0
        self._body = b""
        self._rendered_at = -float("inf")   # when the last rendering began (monotonic)
        self._waiters = 0                   # scrapes waiting for a newer rendering
        self._stop = False
        self._thread: threading.Thread | None = None

    def changed(self) -> None:
        """The store has changed (this daemon stored a boot): render again."""
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()

    def body(self, timeout_s: float = 30.0) -> bytes:
        """The exposition text of the fleet metrics, waiting (at most ``timeout_s``) for a
        rendering that includes every change reported so far."""
        with self._cond:
            self._waiters += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: self._built >= self._wanted or self._stop, timeout_s)
            finally:
                self._waiters -= 1
            return self._body

    def render(self) -> None:
        """Read the store and render, now (the thread's work; callable directly)."""
        t0 = time.monotonic()
        with self._cond:
            wanted, self._rendered_at = self._wanted, t0
        registry = CollectorRegistry(auto_describe=False)
        try:
            since = (datetime.now(UTC) - timedelta(seconds=self.window_s)
                     if self.window_s > 0 else None)
            groups = fleet_rows(self.engine, since)
            with self.engine.connect() as conn:
                n_boots, n_hosts = conn.execute(STORE_COUNTS).one()
                shared = conn.execute(SHARED_MACHINE_ID_HOSTS).scalar_one()
            metrics = list(fleet_metrics(groups, n_hosts, n_boots))
            g = GaugeMetricFamily(
                "memledger_fleet_shared_machine_id_hosts", "Hosts whose machine id another "
                "host has too: clones of one disk image (or a sender claiming another's id). "
                "Their boots are kept apart; give each machine its own /etc/machine-id.")
            g.add_metric([], shared)
            metrics.append(g)
            ok = 1
        except SQLAlchemyError as exc:
            log.warning("fleet metrics: cannot read the store: %s", str(exc).splitlines()[0])
            metrics, ok = [], 0
        took = time.monotonic() - t0
        for name, doc, value in (
                ("memledger_fleet_refresh_timestamp_seconds",
                 "When the fleet metrics were last read from the store (Unix time).", time.time()),
                ("memledger_fleet_window_seconds",
                 "Only boots captured this long before the reading count in the fleet "
                 "metrics (0: every stored boot).", self.window_s),
                ("memledger_fleet_refresh_duration_seconds",
                 "How long reading the fleet metrics from the store took.", took),
                ("memledger_fleet_refresh_success",
                 "1 when the last reading of the fleet metrics succeeded, else 0.", ok)):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            metrics.append(g)
        registry.register(_Fixed(metrics))
        body = generate_latest(registry)
        with self._cond:
            self._body, self._built = body, max(self._built, wanted)
            self._cond.notify_all()

    def _due_in(self) -> float:
        """Seconds until the next rendering is due (0: now); called holding the lock."""
        since = time.monotonic() - self._rendered_at
        if self._built < self._wanted:
            if self._waiters:
                return 0.0
            return max(0.0, min(self.min_gap_s, self.interval_s) - since)
        return max(0.0, self.interval_s - since)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (due := self._due_in()) > 0:
                    self._cond.wait(due)
                if self._stop:
                    return
            self.render()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
