"""Fleet metrics rendered ahead of scrapes: a scrape after this daemon's ingest sees it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from capturegen import BOOT_NAMES, make_capture
from memledger.exporters.fleetview import FleetView
from memledger.store.compare import compare
from memledger.store.db import make_engine, resolve_url
from memledger.store.ingest import ingest_bytes
from memledger.store.migrate import upgrade
from prometheus_client.parser import text_string_to_metric_families


def _values(body: bytes, name: str) -> list[float]:
    return [s.value for f in text_string_to_metric_families(body.decode())
            for s in f.samples if s.name == name]


def test_a_scrape_waits_for_the_rendering_that_holds_the_new_boot(tmp_path: Path) -> None:
    engine = make_engine(resolve_url(str(tmp_path / "m.db")))
    upgrade(engine)
    ingest_bytes(engine, make_capture("6.1.0-47-amd64-default", 1, 1), "t")
    view = FleetView(engine, interval_s=3600)   # no periodic reading during the test
    view.start()
    try:
        assert _values(view.body(), "memledger_store_boots") == [1]
        first = _values(view.body(), "memledger_fleet_refresh_timestamp_seconds")
        assert view.body() == view.body()       # nothing changed: the same rendering
        ingest_bytes(engine, make_capture("6.12.117+deb12-amd64-default", 2, 1), "t")
        view.changed()
        body = view.body()
        assert _values(body, "memledger_store_boots") == [2]
        assert sum(_values(body, "memledger_fleet_boots")) == 2
        assert _values(body, "memledger_fleet_refresh_timestamp_seconds") > first
        assert _values(body, "memledger_fleet_refresh_success") == [1]
    finally:
        view.stop()
        engine.dispose()


def test_boots_arriving_fast_are_read_together_unless_a_scrape_waits(tmp_path: Path) -> None:
    engine = make_engine(resolve_url(str(tmp_path / "m.db")))
    upgrade(engine)
    view = FleetView(engine, interval_s=3600, min_gap_s=3600)
    readings: list[float] = []
    render = view.render
    view.render = lambda: (readings.append(time.monotonic()), render())[1]  # type: ignore[method-assign]
    view.start()
    try:
        assert _values(view.body(), "memledger_store_boots") == [0]
        assert len(readings) == 1
        for boot in range(3):   # a wave: boot after boot stored, nobody scraping
            ingest_bytes(engine, make_capture("6.1.0-47-amd64-default", 1, boot), "t")
            view.changed()
        time.sleep(1.0)
        assert len(readings) == 1
        asked = time.monotonic()
        assert _values(view.body(timeout_s=10), "memledger_store_boots") == [3]
        assert len(readings) == 2 and readings[1] >= asked   # one reading, for the scrape
    finally:
        view.stop()
        engine.dispose()


def test_an_unreadable_store_is_a_failed_reading_not_a_crash(tmp_path: Path) -> None:
    engine = make_engine(resolve_url(str(tmp_path / "m.db")))   # no schema: every query fails
    view = FleetView(engine)
    view.render()
    body = view.body(timeout_s=1)
    assert _values(body, "memledger_fleet_refresh_success") == [0]
    assert _values(body, "memledger_fleet_boots") == []
    engine.dispose()


def _labelled(body: bytes, name: str) -> dict[str, float]:
    return {s.labels["kernel_release"]: s.value
            for f in text_string_to_metric_families(body.decode())
            for s in f.samples if s.name == name}


@pytest.mark.slow
def test_the_window_counts_only_recent_boots(db_url: str) -> None:
    """Two boots captured a day ago (6.1), one 40 days ago (5.10): a 30-day window counts
    the two, says its length, and the store's own count still holds all three; without a
    window every boot counts."""
    from datetime import UTC, datetime, timedelta

    engine = make_engine(resolve_url(db_url))
    upgrade(engine)
    now = datetime.now(UTC)
    for host, name, days in ((1, "6.1.0-47-amd64-default", 1), (2, "6.1.0-47-amd64-default", 1),
                             (3, "5.10.0-32-amd64-default", 40)):
        ingest_bytes(engine, make_capture(name, host, 1, captured_at=now - timedelta(days=days)),
                     "t")
    try:
        view = FleetView(engine, window_s=30 * 86400)
        view.render()
        body = view.body()
        assert _labelled(body, "memledger_fleet_boots") == {"6.1.0-47-amd64": 2}
        assert _labelled(body, "memledger_fleet_hosts") == {"6.1.0-47-amd64": 2}
        assert _values(body, "memledger_fleet_window_seconds") == [30 * 86400]
        assert _values(body, "memledger_store_boots") == [3]
        assert _values(body, "memledger_store_hosts") == [3]
        everything = FleetView(engine)
        everything.render()
        body = everything.body()
        assert _labelled(body, "memledger_fleet_boots") == {"6.1.0-47-amd64": 2,
                                                             "5.10.0-32-amd64": 1}
        assert _values(body, "memledger_fleet_window_seconds") == [0]
    finally:
        engine.dispose()


# The EFI figures: on them SeaBIOS boots (another firmware) are left out everywhere, so
# each release's measuring boots are all on the one OVMF, one fleet group.
EFI_FIGURES = {"total": "bs_total", "reclaimed": "bs_reclaimed", "kept": "bs_kept",
               "leaked": "bs_leaked"}


def test_the_fleet_counts_the_boots_compare_counts(tmp_path: Path) -> None:
    """One rule for what counts (ledger/measures.py): an efi=debug boot keeps every
    boot-services page and a SeaBIOS boot has none, so neither is in the fleet's medians,
    as neither is in compare's; the fleet says how many it left out."""
    engine = make_engine(resolve_url(str(tmp_path / "m.db")))
    upgrade(engine)
    names = [n for n in BOOT_NAMES if n.startswith(("6.1.0-47-amd64-", "6.12.117+deb12-amd64-"))]
    for i, name in enumerate(names):
        ingest_bytes(engine, make_capture(name, i, 1), "t")
    view = FleetView(engine)
    view.render()
    fams = {f.name: f for f in text_string_to_metric_families(view.body().decode())}
    verdict = compare(engine, "6.1.0-47-amd64", "6.12.117+deb12-amd64").as_dict()
    figures = {f["name"]: f for f in verdict["figures"]}
    for side, release in (("baseline", "6.1.0-47-amd64"), ("candidate", "6.12.117+deb12-amd64")):
        for figure, state in EFI_FIGURES.items():
            fleet = {s.labels["firmware_version"]: s.value
                     for s in fams["memledger_fleet_efi_boot_services_bytes"].samples
                     if s.labels["kernel_release"] == release and s.labels["stat"] == "median"
                     and s.labels["state"] == state.removeprefix("bs_")}
            assert list(fleet.values()) == [figures[figure][side]["median"]], (release, figure)
        left = {s.labels["reason"]: s.value for s in fams["memledger_fleet_left_out_boots"].samples
                if s.labels["kernel_release"] == release and s.value}
        # The lab's configurations of each release: one efi=debug boot, one SeaBIOS boot.
        assert left == {"efi_debug": 1.0, "not_efi": 1.0}, release
    # Kept: efi=debug keeps every page (tens of MiB); the other OVMF boots keep next to
    # nothing, and that is the median both say.
    assert figures["kept"]["baseline"]["median"] < 1 << 20
    engine.dispose()
