"""``memledger capture``, ``ingest``, ``boots`` and ``reprocess``: capture files and the store."""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from importlib.metadata import version
from multiprocessing.context import BaseContext

import click
from memledger.cli.dboption import DB_OPTION, open_store, use_schema
from memledger.cli.errors import fail, say
from memledger.exporters.terminal import console as terminal
from memledger.exporters.terminal import text
from memledger.store.compare import size_text
from memledger.store.db import display_url
from memledger.store.files import atomic_write
from memledger.store.ingest import BadCapture, Prepared, prepare, reprocess
from memledger.store.ingest import ingest_many as store_ingest_many
from memledger.store.queries import BootRow, list_boots
from memledger.tracer.capture import CaptureError, record
from memledger.tracer.reader import FsTree
from memledger.tracer.untrusted import shown
from rich import box
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine

__all__ = ("boots", "capture", "ingest", "reprocess_cmd")

VERSION = version("memledger")

CAPTURE_EXAMPLES = """
\b
examples:
    memledger capture -o boot.tar.gz                 # this host's current boot
    memledger capture -o /var/lib/memledger/spool/   # into the daemon's spool, named
                                                     # MACHINE_ID-BOOT_ID.tar.gz
    memledger capture --root boot1/root --machine-id $(systemd-id128 new) -o guest.tar.gz   # a lab boot
    memledger analyze boot.tar.gz
"""


@click.command(epilog=CAPTURE_EXAMPLES)
@click.option("--root", default="/", show_default=True,
              type=click.Path(file_okay=False, exists=True), help="The tree to read.")
@click.option("-o", "--output", required=True,
              help="File to write (atomically), a directory to write it into, or - for stdout.")
@click.option("--machine-id", help="Use this machine id (default: ROOT/etc/machine-id).")
@click.option("--boot-id", help="Use this boot id (default: ROOT/proc/sys/kernel/random/boot_id).")
@click.option("--hostname", help="Use this host name (default: ROOT/proc/sys/kernel/hostname).")
def capture(root: str, output: str, machine_id: str | None, boot_id: str | None,
            hostname: str | None) -> None:
    """Write one boot's evidence (kernel log, /proc, /sys, traces) as a capture file.

    A capture is a tar.gz of the tree that ``analyze`` reads, headed by manifest.json
    (format version, memledger version, machine id, host name, boot id, capture time).
    """
    try:
        data, manifest = record(FsTree(root), root, memledger_version=VERSION,
                                captured_at=datetime.now(UTC), machine_id=machine_id,
                                boot_id=boot_id, hostname=hostname)
    except CaptureError as exc:
        fail(str(exc))
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if os.path.isdir(output):
        output = os.path.join(output, f"{manifest.machine_id}-{manifest.boot_id}.tar.gz")
    elif output.endswith(os.sep):
        fail(f"{output}: no such directory (-o DIR/ writes into an existing directory)")
    elif not os.path.isdir(os.path.dirname(output) or "."):
        fail(f"{output}: no such directory: {os.path.dirname(output)}")
    try:
        atomic_write(output, data)
    except OSError as exc:
        fail(f"{output}: {os.strerror(exc.errno or 0) or exc}", 1)
    missing = ", ".join(sorted(manifest.unreadable)) or "none"
    say(f"{output}: boot {manifest.boot_id} of {manifest.hostname or manifest.machine_id} "
        f"({manifest.kernel_release or 'release unknown'}), {len(data):,} bytes; "
        f"unreadable: {missing}")


INGEST_EXAMPLES = """
\b
examples:
    memledger ingest /srv/captures/                  # every *.tar.gz in it
    memledger ingest /srv/captures/*.tar.gz
    memledger ingest --db postgresql+psycopg://memledger@fleetdb/memledger boot.tar.gz
    memledger ingest -j 1 boot.tar.gz                # parse in this process only
"""

# Captures written per transaction: a few bulk statements each (store/ingest.py).
INGEST_BATCH = 256


def _capture_paths(args: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for arg in args:
        if os.path.isdir(arg):
            out.extend(sorted(os.path.join(arg, n) for n in os.listdir(arg) if n.endswith(".tar.gz")))
        else:
            out.append(arg)
    return out


def _prepare_path(path: str) -> tuple[str, Prepared | None, str | None]:
    """Read and parse one capture file (in a worker process): the result or why not."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        return path, prepare(data, VERSION), None
    except OSError as exc:
        return path, None, f"{path}: {os.strerror(exc.errno or 0) or exc}"
    except BadCapture as exc:
        return path, None, f"{path}: {exc}"
    except Exception as exc:  # a parser's failure on one file is that file's, never the run's
        return path, None, _internal(path, exc)


def _internal(path: str, exc: Exception) -> str:
    """One line for a file that a parser failed on in a way it does not report."""
    first = (str(exc).splitlines() or [""])[0][:200]
    return f"{path}: cannot be parsed ({type(exc).__name__}{': ' + first if first else ''})"


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} captures/s")


def _quiet_worker() -> None:
    gc.disable()  # see analyze: parsing makes no reference cycles


# Files a worker takes at a time. The pool queues one chunk more than it has workers, so
# when a worker dies the file that killed it is among the next jobs + 1 chunks.
_CHUNK = 16


def _prepared(paths: list[str], jobs: int) -> Iterator[tuple[str, Prepared | None, str | None]]:
    """Each file parsed, in order; by ``jobs`` worker processes when there are enough files
    to pay for starting them (forkserver: no fork of this process's threads).

    A worker that dies (the OOM killer, a signal) breaks its pool and every file in
    flight with it: those files are parsed again one at a time, each in a pool of its
    own, so that only a file that kills its parser again is refused; the rest go on in a
    new pool."""
    if jobs <= 1 or len(paths) < 2 * INGEST_BATCH:
        yield from map(_prepare_path, paths)
        return
    ctx = multiprocessing.get_context("forkserver")
    done = 0
    while done < len(paths):
        try:
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_quiet_worker) as pool:
                for result in pool.map(_prepare_path, paths[done:], chunksize=_CHUNK):
                    yield result
                    done += 1
        except BrokenProcessPool:
            for path in paths[done:done + (jobs + 1) * _CHUNK]:
                yield _alone(ctx, path)
                done += 1


def _alone(ctx: BaseContext, path: str) -> tuple[str, Prepared | None, str | None]:
    """``path`` parsed in a worker of its own: a file whose parser dies is refused."""
    try:
        with ProcessPoolExecutor(1, mp_context=ctx, initializer=_quiet_worker) as pool:
            return pool.submit(_prepare_path, path).result()
    except BrokenProcessPool:
        return path, None, f"{path}: the process parsing it died (killed, or out of memory)"


@click.command(epilog=INGEST_EXAMPLES)
@click.argument("files", nargs=-1, required=True, type=click.Path())
@DB_OPTION
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=min(os.cpu_count() or 1, 8),
              show_default="the number of CPUs, at most 8",
              help="Processes that parse captures; one process writes the database.")
def ingest(files: tuple[str, ...], db: str | None, jobs: int) -> None:
    """Store capture FILES (files, or directories of *.tar.gz); a boot already stored is
    counted, not doubled. Bad files are reported one per line and the rest are still
    stored. Captures are written in batches of 256, one transaction each."""
    counts: dict[str, int] = {"new": 0, "replaced": 0, "duplicate": 0, "older": 0, "failed": 0}
    errors: list[str] = []
    paths = _capture_paths(files)
    if not paths:
        fail(f"{', '.join(files)}: no capture files here (*.tar.gz, as `memledger capture` "
             "writes them): nothing to ingest")
    err = terminal(stderr=True)
    gc.disable()
    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), _Rate(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(Progress(*columns, console=err, transient=True,
                                           disable=len(paths) < 2 or not err.is_terminal))
        task = bar.add_task("ingest", total=len(paths))
        batch: list[tuple[Prepared, str | None]] = []
        engine: Engine | None = None

        def flush() -> None:
            nonlocal engine
            if not batch:
                return
            if engine is None:
                # Opened (and made, the first time) only once there is a capture to store:
                # a run that stores nothing leaves no database, and never removes one.
                engine = stack.enter_context(open_store(db, create=True))
            for (_, path), result in zip(batch, store_ingest_many(engine, batch), strict=True):
                if result.status == "refused":
                    counts["failed"] += 1
                    errors.append(f"{path}: the database refused it: {result.why}")
                else:
                    counts[result.status] += 1
            bar.advance(task, len(batch))
            batch.clear()
            gc.collect()  # the cyclic collector is off while parsing; one pass per batch

        for path, prepared, why in _prepared(paths, jobs):
            if prepared is None:
                counts["failed"] += 1
                errors.append(why or path)
                bar.advance(task)
                continue
            batch.append((prepared, path))
            if len(batch) >= INGEST_BATCH:
                flush()
        flush()
        for line in errors:
            say(f"memledger: error: {line}")
        click.echo(", ".join(f"{n} {k}" for k, n in counts.items()), err=True)
        if errors:
            sys.exit(2)


_UNKNOWN = Text("?", style="dim")


def _mib(value: int | None, applies: bool = True) -> str | Text:
    if not applies:
        return Text("-", style="dim")
    return _UNKNOWN if value is None else size_text(value, "bytes", mib=False, short=True)


def _firmware(r: BootRow) -> str | Text:
    """``EFI EDK II 0.0.0``, ``not EFI``, or ``?`` when the log cannot tell."""
    if r["efi"] is False:
        return "not EFI"
    if r["efi"] is None:
        return _UNKNOWN
    return text(" ".join(v for v in ("EFI", r["firmware_vendor"], r["firmware_version"]) if v))


def _boot_rows(rows: list[BootRow]) -> Table:
    t = Table(title="stored boots, newest first", box=box.SIMPLE_HEAD, pad_edge=False,
              padding=(0, 0),
              caption="EFI boot services reclaimed, kept and leaked, and memory below 1 MiB "
              "freed, in MiB (K: KiB, B: bytes); ? = unknown, - = does not apply (not EFI). "
              "--json has every figure.")
    t.add_column("host", no_wrap=True, max_width=16, overflow="ellipsis")
    t.add_column("boot", no_wrap=True, min_width=8)
    # The release is what compare selects by: never cut (a no_wrap column keeps its width).
    t.add_column("kernel", no_wrap=True,
                 min_width=max((len(shown(r["kernel_release"] or "?")) for r in rows), default=6))
    t.add_column("firmware", min_width=9)  # wraps between words on a narrow terminal
    for name in ("reclaimed", "kept", "leaked", "<1M", "anom"):
        t.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for r in rows:
        bs, efi = r["efi_boot_services"], r["efi"] is not False
        t.add_row(text(r["hostname"] or r["machine_id"][:12]), text(r["boot_id"][:8]),
                  text(r["kernel_release"]) if r["kernel_release"] else _UNKNOWN, _firmware(r),
                  _mib(bs["reclaimed_bytes"], efi), _mib(bs["kept_bytes"], efi),
                  _mib(bs["leaked_bytes"], efi), _mib(r["low_memory"]["freed_bytes"]),
                  str(r["anomalies"]))
    return t


@click.command(epilog="\b\nexamples:\n    memledger boots\n    memledger boots --json --limit 20")
@DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the newest N boots.")
def boots(db: str | None, as_json: bool, limit: int | None) -> None:
    """List the stored boots with their headline ledger figures."""
    with open_store(db, create=False) as engine:
        use_schema(engine, write=False)
        rows = list_boots(engine, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no stored boots in {display_url(engine.url)}", err=True)
        return
    terminal().print(_boot_rows(rows))


@click.command("reprocess", epilog="\b\nexamples:\n    memledger reprocess\n"
               "    memledger reprocess --db postgresql+psycopg://memledger@fleetdb/memledger")
@DB_OPTION
def reprocess_cmd(db: str | None) -> None:
    """Rebuild every stored ledger and its events from the stored raw captures (after an
    upgrade of memledger's parsers)."""
    err = terminal(stderr=True)
    with open_store(db, create=False) as engine:
        use_schema(engine, write=True)
        with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("reprocess", total=None)

            def step(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            report = reprocess(engine, VERSION, step)
    for machine_id, boot_id, why in report.failed:
        say(f"memledger: error: boot {boot_id} of {machine_id}: {why}")
    click.echo(f"reprocessed {report.boots} boots in {display_url(engine.url)}: "
               f"{report.changed} ledgers changed, "
               f"{len(report.failed)} failed", err=True)
    if report.failed:
        sys.exit(1)
