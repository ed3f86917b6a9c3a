"""Fuzz memledger's parsers with atheris (libFuzzer for Python), each for a fixed time.

    python tests/fuzz/fuzzrun.py                      # every target, 60 s each, 2 at a time
    python tests/fuzz/fuzzrun.py --seconds 10 trace   # one target, 10 s
    python tests/fuzz/fuzzrun.py --list

Each target runs in its own process, with the memledger modules instrumented for
coverage, a corpus in build/fuzz/TARGET seeded from the real fixtures, and libFuzzer's
-timeout (a hang is a crash too). A crash writes tests/fuzz/crashers/TARGET/crash-…:
commit it with the fix, and tests/reliability/test_fuzz_regressions.py replays it for
ever. Exit status: 0 when no target crashed, 1 otherwise. The summary gives each
target's executions and time (the figures in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
CRASHERS = HERE / "crashers"
WORK = REPO / "build" / "fuzz"
NAMES = ("kernel_log", "capture_gzip", "capture_tar", "root_files", "trace", "runtime_batch",
         "kmsg_record", "log_lines", "proc_files", "boot_setup", "manifest")


def _one(target: str, seconds: int) -> None:
    """In the child: instrument, seed and fuzz one target (never returns)."""
    import atheris

    sys.path[:0] = [str(TESTS), str(HERE)]
    with atheris.instrument_imports(include=["memledger"]):
        import targets
    corpus = WORK / target
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in targets.SEEDS[target]():
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
    crashers = CRASHERS / target
    crashers.mkdir(parents=True, exist_ok=True)
    fn = targets.TARGETS[target]
    args = [sys.argv[0], f"-max_total_time={seconds}", "-timeout=20", "-rss_limit_mb=3072",
            "-max_len=262144", f"-artifact_prefix={crashers}/", "-print_final_stats=1", str(corpus)]
    atheris.Setup(args, fn)
    atheris.Fuzz()


def _run(target: str, seconds: int) -> tuple[str, int, int | None, float, str]:
    log = WORK / f"{target}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "wb") as out:
        code = subprocess.call([sys.executable, __file__, "--one", target, "--seconds", str(seconds)],
                               stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    text = log.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    return target, code, int(runs[-1]) if runs else None, time.monotonic() - start, text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="targets to run (default: all)")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")),
                    help="fuzzing time per target (default: $FUZZ_SECONDS or 60)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="targets at a time (default: 2)")
    ap.add_argument("--list", action="store_true", help="list the targets")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.one:
        _one(opts.one, opts.seconds)
    if opts.list:
        print("\n".join(NAMES))
        return 0
    unknown = sorted(set(opts.targets) - set(NAMES))
    if unknown:
        ap.error(f"unknown target(s): {', '.join(unknown)} (--list shows them)")
    chosen = opts.targets or list(NAMES)
    failed = 0
    total_runs = 0
    print(f"{'target':<15} {'result':<8} {'executions':>11} {'seconds':>8}")
    with ThreadPoolExecutor(opts.jobs) as pool:
        for target, code, runs, took, text in pool.map(lambda t: _run(t, opts.seconds), chosen):
            ok = code == 0 and runs is not None
            failed += not ok
            total_runs += runs or 0
            print(f"{target:<15} {'ok' if ok else 'CRASH':<8} {runs if runs is not None else '-':>11} "
                  f"{took:8.0f}", flush=True)
            if not ok:
                tail = "\n".join(text.splitlines()[-40:])
                print(f"--- {target} (exit {code}; artifacts in {CRASHERS / target}):\n{tail}\n---")
    print(f"{len(chosen)} targets, {opts.seconds} s each, {total_runs} executions; "
          f"{failed} crashed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
