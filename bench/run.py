"""``make bench``: run the benchmarks and write bench/results.json and a short table.

Every figure is a ratio or a rate taken within one run, on this machine, against a
baseline measured in the same run (the machines are shared and noisy). The benchmarks
check only that their runs complete and agree with ``memledger analyze``; they never
fail on speed.

    python -m bench.run                  # every benchmark
    python -m bench.run parse            # one of them
    python -m bench.run fleet-ingest     # a reboot wave at one fleet daemon
    MEMLEDGER_REALWORLD=DIR python -m bench.run realworld   # the real-world logs
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memledger.cli.inputs import InputError, load
from memledger.ledger.compute import compute_ledger
from memledger.ledger.model import LedgerDoc
from memledger.tracer.capture import Manifest, pack
from memledger.tracer.reader import FsTree, RecordingTree, read_tree

from bench import fleet_ingest
from bench.captures import BOOTS_PER_HOST, CaptureSet, source_captures, write_captures
from bench.corpus import Boot, corpus, load_sources
from bench.fleet import Fleet, expected_side, populate
from bench.scrape import DaemonProc, Samples, cpu_seconds, rss_bytes, samples, wrk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
RESULTS = HERE / "results.json"
MEMLEDGER = str(Path(sys.executable).with_name("memledger"))
SEED = 20261122
REPEAT = 3


def _best(run: Callable[[], object], repeat: int = REPEAT) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times), times


def _ledgers(stdout: bytes) -> list[dict[str, Any]]:
    """`analyze --json`: one object for one boot, a list for several."""
    doc = json.loads(stdout)
    return doc if isinstance(doc, list) else [doc]


def _sh(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(list(cmd), capture_output=True, check=False, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed (exit {proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    return proc


def _headline(ledger: dict[str, Any]) -> tuple[Any, ...]:
    bs = ledger["efi_boot_services"]
    return (ledger["kernel"].get("release"), bs["total_bytes"], bs["reclaimed_bytes"],
            bs["kept_bytes"], bs["leaked_bytes"], ledger["low_memory"].get("reserved_bytes"))


def _source_headlines(boots: list[Boot]) -> dict[str, tuple[Any, ...]]:
    """Each source boot's ledger (by memledger analyze on the real log), release aside."""
    src = load_sources()
    out = {}
    for name in sorted({b.source for b in boots}):
        path = WORK / f"source-{name}.log"
        path.write_text(src[name])
        (ledger,) = _ledgers(_sh([MEMLEDGER, "analyze", str(path), "--json"]).stdout)
        out[name] = _headline(ledger)[1:]
    return out


# What any CPython parser pays on the same file, whatever it does with the lines: the
# interpreter, reading and splitting the text, and reading each line's time stamp (which
# finding boot boundaries needs). They put the 10x-grep target in context.
FLOORS = {
    "python_start": "pass",
    "read_and_split": "import sys; open(sys.argv[1]).read().split('\\n')",
    "read_split_timestamps": (
        "import sys\n"
        "for l in open(sys.argv[1]).read().split('\\n'):\n"
        "    j = l.find('] ', 2)\n"
        "    if j > 0:\n"
        "        float(l[1:j])\n"),
}


def bench_parse(n: int = 200) -> dict[str, Any]:
    """`memledger analyze` on an n-boot concatenated log against `grep -c memblock`."""
    boots = list(corpus(SEED, n))
    log = WORK / f"boots-{n}.log"
    log.write_text("".join(b.text for b in boots))
    size = log.stat().st_size
    lines = sum(b.text.count("\n") for b in boots)
    grep_s, grep_all = _best(lambda: subprocess.run(["grep", "-c", "memblock", str(log)],
                                                    capture_output=True, check=False))
    out: list[bytes] = []

    def analyze() -> None:
        out.append(_sh([MEMLEDGER, "analyze", str(log), "--json"]).stdout)

    analyze_s, analyze_all = _best(analyze)
    startup_s, _ = _best(lambda: _sh([MEMLEDGER, "--version"]))
    floors = {name: _best(functools.partial(_sh, [sys.executable, "-c", code, str(log)]))[0]
              for name, code in FLOORS.items()}
    ledgers = _ledgers(out[-1])
    # Consistency: one ledger per boot, in order, each equal to its source boot's ledger
    # (the generator keeps the reserved union) and carrying the varied release.
    expected = _source_headlines(boots)
    if len(ledgers) != n:
        raise SystemExit(f"bench parse: {len(ledgers)} ledgers for {n} boots")
    for b, led in zip(boots, ledgers, strict=True):
        got = _headline(led)
        if got[0] != b.release or got[1:] != expected[b.source]:
            raise SystemExit(f"bench parse: boot {b.name}: ledger {got} differs from its "
                             f"source's {expected[b.source]} (release {b.release})")
    mb = size / 1e6
    return {
        "boots": n, "bytes": size, "lines": lines,
        "largest_boot_lines": max(b.text.count("\n") for b in boots),
        "grep_seconds": grep_s, "analyze_seconds": analyze_s,
        "analyze_runs": analyze_all, "grep_runs": grep_all,
        "startup_seconds": startup_s,
        "analyze_mb_per_s": mb / analyze_s,
        "analyze_mb_per_s_without_startup": mb / max(analyze_s - startup_s, 1e-9),
        "grep_mb_per_s": mb / grep_s,
        "ratio_to_grep": analyze_s / grep_s,
        "floors_seconds": floors,
        "floors_ratio_to_grep": {k: v / grep_s for k, v in floors.items()},
        "consistent": True,
    }


def _tests_module(name: str) -> Any:
    """A helper module of tests/ (tests/pgserver.py, tests/realworld.py)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _pg() -> Any:
    """tests/pgserver.py's PgServer (Debian's postgresql in a temporary directory)."""
    return _tests_module("pgserver").PgServer()


def bench_realworld() -> dict[str, Any]:
    """analyze's work (reading, splitting, parsing, the ledger; no start-up) on every log
    of the real-world corpus (tests/realworld.py) in one process, against `grep -c` over
    the same files. Oracle: the corpus test's own check of every boot against its lines."""
    rw = _tests_module("realworld")
    where = rw.corpus_dir()
    if not where.is_dir():
        raise SystemExit(f"bench realworld: no corpus at {where} (set MEMLEDGER_REALWORLD)")
    entries = rw.manifest()
    paths = [str(where / e.file) for e in entries]
    size = sum(e.bytes for e in entries)
    grep_s, grep_all = _best(lambda: subprocess.run(["grep", "-c", "memblock", *paths],
                                                    capture_output=True, check=False))
    ledgers: dict[str, list[LedgerDoc] | None] = {}

    def analyze(path: str) -> None:
        try:
            ledgers[path] = [compute_ledger(ev).as_dict() for ev in load(path)]
        except InputError:
            ledgers[path] = None

    def analyze_all_logs() -> None:
        for path in paths:
            analyze(path)

    analyze_s, analyze_all = _best(analyze_all_logs)
    slowest = []
    for e, path in zip(entries, paths, strict=True):
        t0 = time.perf_counter()
        analyze(path)
        slowest.append((e.bytes / 1e6 / max(time.perf_counter() - t0, 1e-9), e.file, e.format))
    slowest.sort()
    problems = []
    for e, path in zip(entries, paths, strict=True):
        if e.format not in rw.READ_FORMATS:
            continue  # a vendor's format, read as far as it goes
        lines = rw.lines_of(Path(path).read_bytes())
        for i, led in enumerate(ledgers[path] or []):
            problems += [f"{path}: {p}" for p in rw.check_boot(lines, led, i == 0)]
    if problems:
        raise SystemExit("bench realworld: " + "; ".join(problems[:5]))
    mb = size / 1e6
    return {
        "logs": len(entries), "bytes": size,
        "boots": sum(len(v or []) for v in ledgers.values()),
        "refused": sum(1 for v in ledgers.values() if v is None),
        "analyze_seconds": analyze_s, "analyze_runs": analyze_all,
        "grep_seconds": grep_s, "grep_runs": grep_all,
        "analyze_mb_per_s": mb / analyze_s, "grep_mb_per_s": mb / grep_s,
        "ratio_to_grep": analyze_s / grep_s,
        "slowest_logs": [{"file": f, "format": fmt, "mb_per_s": r} for r, f, fmt in slowest[:5]],
        "consistent": True,
    }


def _stored_headlines(db: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = json.loads(_sh([MEMLEDGER, "boots", "--db", db, "--json"]).stdout)
    return {(r["machine_id"], r["boot_id"]): (
        r["efi_boot_services"]["total_bytes"], r["efi_boot_services"]["reclaimed_bytes"],
        r["efi_boot_services"]["kept_bytes"], r["efi_boot_services"]["leaked_bytes"],
        r["low_memory"]["reserved_bytes"]) for r in rows}


def _check_backfill(name: str, db: str, caps: CaptureSet, expected: dict[str, tuple[Any, ...]],
                    summary: str) -> None:
    """Every capture stored once, new, with its source boot's figures."""
    if summary != f"{len(caps.files)} new, 0 replaced, 0 duplicate, 0 older, 0 failed":
        raise SystemExit(f"bench backfill ({name}): ingest said {summary!r}")
    stored = _stored_headlines(db)
    if set(stored) != set(caps.source):
        raise SystemExit(f"bench backfill ({name}): {len(stored)} boots stored for "
                         f"{len(caps.source)} captures")
    for key, src in caps.source.items():
        if stored[key] != expected[src]:
            raise SystemExit(f"bench backfill ({name}): boot {key[1]} stored {stored[key]}, "
                             f"its source {src} gives {expected[src]}")


def bench_backfill(n: int = 10_000) -> dict[str, Any]:
    """`memledger ingest` of n capture files into SQLite and PostgreSQL, against reading
    the same files with `gzip -dc`."""
    caps = write_captures(WORK / "captures", SEED, n)
    expected = _source_headlines_of(caps)
    zcat_s, _ = _best(lambda: subprocess.run(f"cat {caps.directory}/*.tar.gz | gzip -dc >/dev/null",
                                             shell=True, check=True), 1)
    out: dict[str, Any] = {"captures": n, "bytes": caps.bytes, "jobs": os.cpu_count(),
                           "batch": 256, "zcat_seconds": zcat_s}

    def run(name: str, db: str) -> None:
        t0 = time.perf_counter()
        proc = _sh([MEMLEDGER, "ingest", "--db", db, str(caps.directory)])
        seconds = time.perf_counter() - t0
        _check_backfill(name, db, caps, expected, proc.stderr.decode().strip().splitlines()[-1])
        out[name] = {"seconds": seconds, "captures_per_s": n / seconds,
                     "ratio_to_zcat": seconds / zcat_s, "consistent": True}

    sqlite = WORK / "backfill.db"
    for f in WORK.glob("backfill.db*"):
        f.unlink()
    run("sqlite", f"sqlite:///{sqlite}")
    pg = _pg()
    pg.start()
    try:
        run("postgresql", pg.new_database())
    finally:
        pg.stop()
    return out


FLEET_BOOTS = 100_000
# The fleet sizes compare is measured at: backend → (boots, boots a host, with documents).
# The 1 000 000-boot store is PostgreSQL's (issue 30's target), over 100 000 hosts, and
# without the ledger documents, which compare does not read (4 GB of JSON).
FLEETS = {"sqlite": (FLEET_BOOTS, 4, True), "postgresql": (FLEET_BOOTS, 4, True),
          "postgresql-1m": (1_000_000, 10, False)}
_FLEET: dict[str, tuple[str, Fleet, float]] = {}
_PG: list[Any] = []


def _fleet_store(backend: str) -> tuple[str, Fleet, float]:
    """The fleet store of :data:`FLEETS` ``backend`` (made once per run): URL, contents,
    seconds it took to fill."""
    if backend not in _FLEET:
        if backend == "sqlite":
            path = WORK / "fleet.db"
            for f in WORK.glob("fleet.db*"):
                f.unlink()
            url = f"sqlite:///{path}"
        else:
            if not _PG:
                pg = _pg()
                pg.start()
                atexit.register(pg.stop)
                _PG.append(pg)
            url = _PG[0].new_database()
        n, per_host, documents = FLEETS[backend]
        t0 = time.perf_counter()
        fleet = populate(url, WORK / "sources", SEED, n, per_host, documents)
        _FLEET[backend] = (url, fleet, time.perf_counter() - t0)
    return _FLEET[backend]


def _compare_once(url: str, base: str, cand: str, fmt: str, docs: list[Any]) -> None:
    proc = subprocess.run([MEMLEDGER, "compare", "--db", url, "--baseline", base,
                           "--candidate", cand, "--format", fmt],
                          capture_output=True, check=False)
    if proc.returncode not in (0, 1):  # 1: a regression, which is an answer
        raise SystemExit(f"bench compare: exit {proc.returncode}: {proc.stderr.decode()}")
    docs.append(json.loads(proc.stdout) if fmt == "json" else proc.stdout)


COMPARISONS = (("6.1.*", "6.12.*"),               # every boot: two kernel series
               ("6.1.0-50-amd64", "6.12.117+deb12-amd64"))  # two releases


def bench_compare() -> dict[str, Any]:
    """`memledger compare` over the fleet stores (:data:`FLEETS`): the default table, as a
    release engineer runs it, and the JSON that lists every host and boot; each answer
    checked against the medians of the stored values (statistics.median)."""
    out: dict[str, Any] = {"boots": FLEET_BOOTS}
    startup_s, _ = _best(lambda: _sh([MEMLEDGER, "compare", "--help"]))
    out["startup_seconds"] = startup_s
    for backend in FLEETS:
        url, fleet, fill_s = _fleet_store(backend)
        res: dict[str, Any] = {"fill_seconds": fill_s, "boots": fleet.boots, "runs": []}
        for base, cand in COMPARISONS:
            if base not in fleet.releases and "*" not in base:
                base = max(r for r in fleet.releases if r.startswith("6.1."))
            if cand not in fleet.releases and "*" not in cand:
                cand = max(r for r in fleet.releases if r.startswith("6.12."))
            tables: list[Any] = []
            seconds, runs = _best(functools.partial(_compare_once, url, base, cand, "table", tables))
            docs: list[Any] = []
            json_s, _ = _best(functools.partial(_compare_once, url, base, cand, "json", docs), 1)
            doc = docs[-1]
            for side, sel in (("baseline", base), ("candidate", cand)):
                want = expected_side(fleet, sel)
                for f in doc["figures"]:
                    got = (f[side]["n"], f[side]["median"])
                    if got != want[f["name"]]:
                        raise SystemExit(f"bench compare ({backend}): {sel} {f['name']}: "
                                         f"{got} != {want[f['name']]}")
            res["runs"].append({"baseline": base, "candidate": cand, "seconds": seconds,
                                "all_runs": runs, "json_seconds": json_s,
                                "boots": doc["baseline"]["boots"] + doc["candidate"]["boots"],
                                "consistent": True})
        out[backend] = res
    return out


WRK_SECONDS = 10


def _source_headlines_of(caps: CaptureSet) -> dict[str, tuple[Any, ...]]:
    """(total, reclaimed, kept, leaked, low reserved) of each source boot, by analyze."""
    out = {}
    for src, path in source_captures(WORK / "sources", set(caps.source.values())).items():
        (ledger,) = _ledgers(_sh([MEMLEDGER, "analyze", str(path), "--json"]).stdout)
        out[src] = _headline(ledger)[1:]
    return out


def _host_store() -> tuple[str, Path, CaptureSet, dict[str, tuple[Any, ...]]]:
    """One host's four boots, ingested: the store a fleet host's daemon keeps."""
    caps = write_captures(WORK / "host-captures", SEED, BOOTS_PER_HOST)
    db = WORK / "host.db"
    for f in WORK.glob("host.db*"):
        f.unlink()
    _sh([MEMLEDGER, "ingest", "--db", str(db), str(caps.directory)])
    root = WORK / "host-root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    machine_id = next(iter(caps.source))[0]
    (root / "etc" / "machine-id").write_text(machine_id + "\n")
    return f"sqlite:///{db}", root, caps, _source_headlines_of(caps)


def _check_host(got: Samples, caps: CaptureSet, expected: dict[str, tuple[Any, ...]]) -> None:
    newest = list(caps.source.values())[-1]   # the last capture has the latest time
    want = expected[newest][1]
    have = got.get(("memledger_efi_boot_services_bytes", (("state", "reclaimed"),)))
    if got.get(("memledger_store_boots", ())) != len(caps.files) or have != want:
        raise SystemExit(f"bench scrape (host): {len(caps.files)} boots and reclaimed {want} "
                         f"expected, /metrics says {got.get(('memledger_store_boots', ()))} "
                         f"and {have}")


def _check_fleet(got: Samples, fleet: Fleet) -> None:
    per_release: dict[str, float] = {}
    for (name, labels), value in got.items():
        if name == "memledger_fleet_boots":
            release = dict(labels)["kernel_release"]
            per_release[release] = per_release.get(release, 0) + value
    if got.get(("memledger_store_boots", ())) != fleet.boots or per_release != fleet.releases:
        raise SystemExit("bench scrape (fleet): /metrics does not count the stored boots "
                         "per release")


def _wrk_best(url: str) -> dict[str, Any]:
    """One connection, as a Prometheus server scrapes: the best of three 5 s runs (the
    machine's neighbours show up in a p99), with every run kept."""
    runs = [wrk(url, 1, 5) for _ in range(3)]
    best = min(runs, key=lambda r: r["p99_ms"])
    return {**best, "runs": runs}


def _static_baseline() -> dict[str, Any]:
    """Python's own http.server (the server class the daemon uses) serving a file of a
    host-mode scrape's size: what any Python exporter pays per request, in this run."""
    root = WORK / "static"
    root.mkdir(exist_ok=True)
    (root / "metrics").write_bytes(b"# filler\n" * 800)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        end = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        return _wrk_best(url)
    finally:
        proc.terminate()
        proc.wait()


def bench_scrape() -> dict[str, Any]:
    """/metrics latency under wrk on loopback: host mode (one host's store) and fleet
    mode (the 100 000-boot store, SQLite and PostgreSQL); one connection, as a
    Prometheus server scrapes, and ten; and a static file from Python's http.server as
    the baseline of the same run."""
    out: dict[str, Any] = {"wrk_seconds": WRK_SECONDS, "static_baseline": _static_baseline()}
    url, root, caps, expected = _host_store()
    spool = WORK / "host-spool"
    spool.mkdir(exist_ok=True)
    d = DaemonProc(MEMLEDGER, WORK / "daemon-host.log", "--db", url, "--spool", str(spool),
                   "--root", str(root), "--no-capture-self")
    try:
        _check_host(samples(d.url), caps, expected)
        out["host"] = {"c1": _wrk_best(d.url), "c10": wrk(d.url, 10, WRK_SECONDS)}
        _check_host(samples(d.url), caps, expected)   # and still right after the load
    finally:
        d.stop()
    for backend in ("sqlite", "postgresql"):
        furl, fleet, _ = _fleet_store(backend)
        fspool = WORK / f"fleet-spool-{backend}"
        fspool.mkdir(exist_ok=True)
        d = DaemonProc(MEMLEDGER, WORK / f"daemon-fleet-{backend}.log", "--db", furl, "--spool",
                       str(fspool), "--no-capture-self", "--fleet")
        try:
            got = samples(d.url)
            _check_fleet(got, fleet)
            out[f"fleet_{backend}"] = {
                "c1": _wrk_best(d.url), "c10": wrk(d.url, 10, WRK_SECONDS),
                "refresh_seconds": got[("memledger_fleet_refresh_duration_seconds", ())],
                "series": sum(1 for k in got if k[0].startswith("memledger_fleet_"))}
            _check_fleet(samples(d.url), fleet)
        finally:
            d.stop()
    return out


IDLE_SECONDS = 60


def bench_footprint() -> dict[str, Any]:
    """The host-mode daemon at rest: RSS and CPU over a minute, from /proc, and its peak
    RSS from GNU time -v."""
    url, root, caps, expected = _host_store()
    spool = WORK / "host-spool"
    spool.mkdir(exist_ok=True)
    d = DaemonProc(MEMLEDGER, WORK / "daemon-idle.log", "--db", url, "--spool", str(spool),
                   "--root", str(root), "--no-capture-self", timed=True)
    try:
        _check_host(samples(d.url), caps, expected)   # one scrape, as Prometheus would
        time.sleep(5)                                  # let start-up settle
        cpu0, t0 = cpu_seconds(d.pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        cpu1, t1 = cpu_seconds(d.pid), time.monotonic()
        mem = rss_bytes(d.pid)
    finally:
        log = d.stop()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log)
    return {"idle_seconds": t1 - t0, "cpu_seconds": cpu1 - cpu0,
            "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
            "rss_bytes": mem["VmRSS"], "peak_rss_bytes_proc": mem["VmHWM"],
            "peak_rss_bytes_time": int(m.group(1)) * 1024 if m else None}


PARSE_COST_MIB = (1, 8, 32)


def _peak_rss(cmd: Sequence[str]) -> tuple[int, float]:
    """Peak RSS (GNU time -v) and wall time of a command that must succeed."""
    t0 = time.perf_counter()
    proc = _sh(["/usr/bin/time", "-v", *cmd])
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr.decode())
    assert m, proc.stderr[-300:]
    return int(m.group(1)) * 1024, wall


def bench_parse_cost() -> dict[str, Any]:
    """What one capture costs to parse, as the daemon's parser child parses it: `memledger
    analyze` of a capture whose kernel log is 1, 8 and 32 MiB (the largest a capture holds,
    a whole log ring), a real boot's log padded with its own mid-boot lines. Peak RSS above
    `memledger --version`'s, per byte of log: what --parse.memory-limit and --parse.timeout
    are sized against."""
    src = ROOT / "tests/fixtures/boots/6.12.117+deb12-amd64-memblock/root"
    rec = RecordingTree(FsTree(src))
    read_tree(rec, str(src))
    text = rec.files["dmesg.txt"].decode()
    pad = "".join(text.splitlines(keepends=True)[300:600])
    base_rss, base_s = _peak_rss([MEMLEDGER, "--version"])
    runs = []
    for mib in PARSE_COST_MIB:
        log = (text + pad * max(0, ((mib << 20) - len(text)) // len(pad))).encode()
        m = Manifest(machine_id="0" * 32, boot_id="00000000-0000-0000-0000-000000000001",
                     captured_at=datetime(2026, 11, 1, tzinfo=UTC), memledger_version="bench")
        path = WORK / f"parse-cost-{mib}.tar.gz"
        path.write_bytes(pack({**rec.files, "dmesg.txt": log}, set(rec.dirs), m))
        peak, wall = min(_peak_rss([MEMLEDGER, "analyze", str(path), "--json"])
                         for _ in range(REPEAT))
        runs.append({"log_bytes": len(log), "capture_bytes": path.stat().st_size,
                     "peak_rss_bytes": peak, "seconds": wall,
                     "bytes_per_log_byte": (peak - base_rss) / len(log),
                     "seconds_without_startup": wall - base_s})
    return {"baseline_rss_bytes": base_rss, "baseline_seconds": base_s, "runs": runs}


def bench_fleet_ingest() -> dict[str, Any]:
    """A reboot wave: 200 hosts post 5 captures each over mutual TLS to one fleet daemon
    on PostgreSQL (bench/fleet_ingest.py)."""
    return fleet_ingest.run(WORK, MEMLEDGER, _tests_module, REPEAT)


BENCHES: dict[str, Callable[[], dict[str, Any]]] = {
    "parse": bench_parse, "parse-cost": bench_parse_cost, "realworld": bench_realworld,
    "backfill": bench_backfill, "compare": bench_compare, "scrape": bench_scrape,
    "footprint": bench_footprint, "fleet-ingest": bench_fleet_ingest}


def _table(results: dict[str, Any]) -> str:
    rows = []
    if p := results.get("parse"):
        rows.append(f"parse    {p['bytes'] / 1e6:6.1f} MB, {p['boots']} boots: "
                    f"{p['analyze_mb_per_s']:6.1f} MB/s ({p['analyze_mb_per_s_without_startup']:.1f} "
                    f"without start-up), {p['ratio_to_grep']:.1f}x grep -c "
                    f"({p['grep_mb_per_s']:.0f} MB/s); floors: " + ", ".join(
                        f"{k} {v:.0f}x" for k, v in p["floors_ratio_to_grep"].items()))
    if rw := results.get("realworld"):
        rows.append(f"realworld {rw['logs']} real logs, {rw['bytes'] / 1e6:.1f} MB, {rw['boots']} boots "
                    f"({rw['refused']} refused): {rw['analyze_mb_per_s']:.1f} MB/s without start-up, "
                    f"{rw['ratio_to_grep']:.1f}x grep -c; slowest log "
                    f"{rw['slowest_logs'][0]['mb_per_s']:.1f} MB/s ({rw['slowest_logs'][0]['format']})")
    if pc := results.get("parse-cost"):
        for r in pc["runs"]:
            rows.append(f"parse-cost {r['log_bytes'] / 2**20:.0f} MiB log ({r['capture_bytes'] / 2**20:.1f} "
                        f"MiB capture): peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, "
                        f"{r['bytes_per_log_byte']:.1f} bytes per byte of log above start-up, "
                        f"{r['seconds_without_startup']:.2f} s without start-up")
    if b := results.get("backfill"):
        for db in ("sqlite", "postgresql"):
            if r := b.get(db):
                rows.append(f"backfill {b['captures']} captures ({b['bytes'] / 1e6:.0f} MB) into "
                            f"{db}: {r['seconds']:.1f} s, {r['captures_per_s']:.0f} captures/s, "
                            f"{r['ratio_to_zcat']:.0f}x gzip -dc ({b['jobs']} parse processes)")
    if c := results.get("compare"):
        for db in ("sqlite", "postgresql", "postgresql-1m"):
            for r in c.get(db, {}).get("runs", []):
                rows.append(f"compare  {db} {c[db]['boots']} boots, {r['baseline']} vs "
                            f"{r['candidate']} ({r['boots']} boots): table {r['seconds']:.2f} s, "
                            f"json {r['json_seconds']:.2f} s (start-up {c['startup_seconds']:.2f} s)")
    if sc := results.get("scrape"):
        b = sc["static_baseline"]
        rows.append(f"scrape   baseline (a static file from Python's http.server): p50 "
                    f"{b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms")
        for mode in ("host", "fleet_sqlite", "fleet_postgresql"):
            if r := sc.get(mode):
                rows.append(f"scrape   {mode}: p50 {r['c1']['p50_ms']:.2f} ms, p99 "
                            f"{r['c1']['p99_ms']:.2f} ms (1 connection); p99 "
                            f"{r['c10']['p99_ms']:.2f} ms at {r['c10']['requests_per_s']:.0f}/s "
                            "(10 connections)")
    if fi := results.get("fleet-ingest"):
        rows.append(f"fleet-ingest {fi['hosts']} hosts, {fi['captures']} captures over mutual TLS "
                    f"to one fleet daemon on PostgreSQL: " + ", ".join(
                        f"{r['captures_per_s']:.0f}" for r in fi["runs"]) + " captures/s "
                    f"(target {fi['target_captures_per_s']}); POST p50 {fi['post_p50_ms']:.0f} ms, "
                    f"p99 {fi['post_p99_ms']:.0f} ms; {fi['busy_503']} busy; daemon peak RSS "
                    f"{fi['daemon_peak_rss_bytes'] / 2**20:.0f} MiB")
    if f := results.get("footprint"):
        rows.append(f"idle     RSS {f['rss_bytes'] / 2**20:.1f} MiB (peak "
                    f"{f['peak_rss_bytes_proc'] / 2**20:.1f} MiB), CPU {f['cpu_percent']:.3f} % "
                    f"over {f['idle_seconds']:.0f} s")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    if not argv and not _tests_module("realworld").corpus_dir().is_dir():
        print("bench: realworld left out: no real-world corpus (set MEMLEDGER_REALWORLD)",
              file=sys.stderr)
        names.remove("realworld")
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"bench: unknown benchmark {', '.join(unknown)} (have: {', '.join(BENCHES)})",
              file=sys.stderr)
        return 2
    WORK.mkdir(exist_ok=True)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in names:
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        results[name] = BENCHES[name]()
    results["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "make bench" if not argv else f"python -m bench.run {' '.join(argv)}",
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(), "kernel": platform.release(),
        "load_1m": os.getloadavg()[0], "seed": SEED,
        "cpu_model": next((line.split(":", 1)[1].strip() for line in
                           Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), None),
        "timing": f"best of {REPEAT} runs; every run is in *_runs",
    }
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
