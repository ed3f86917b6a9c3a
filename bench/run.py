"""``make bench``: run the benchmarks and write bench/results.json and a short table.

Every figure is a ratio or a rate taken within one run, on this machine, against a
baseline measured in the same run (the machines are shared and noisy). The benchmarks
check only that their runs complete and agree with ``memledger analyze``; they never
fail on speed.

    python -m bench.run                  # every benchmark
    python -m bench.run parse            # one of them
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.corpus import Boot, corpus, load_sources

HERE = Path(__file__).resolve().parent
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
        "consistent": True,
    }


BENCHES: dict[str, Callable[[], dict[str, Any]]] = {"parse": bench_parse}


def _table(results: dict[str, Any]) -> str:
    rows = []
    if p := results.get("parse"):
        rows.append(f"parse    {p['bytes'] / 1e6:6.1f} MB, {p['boots']} boots: "
                    f"{p['analyze_mb_per_s']:6.1f} MB/s ({p['analyze_mb_per_s_without_startup']:.1f} "
                    f"without start-up), {p['ratio_to_grep']:.1f}x grep -c "
                    f"({p['grep_mb_per_s']:.0f} MB/s)")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
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
