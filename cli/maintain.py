"""``memledger prune`` and ``memledger db``: keeping the store, its size and its schema."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from memledger.cli.dboption import DB_OPTION, open_store
from memledger.cli.errors import fail
from memledger.cli.units import parse_duration
from memledger.store.db import display_url
from memledger.store.migrate import HEAD, current_revision, schema_state, upgrade
from memledger.store.prune import PruneReport, prune

__all__ = ("NOT_CURRENT", "db", "prune_cmd")

PRUNE_EXAMPLES = """
\b
examples:
    memledger prune --older-than 90d                 # boots captured more than 90 days ago
    memledger prune --keep-per-host 20               # each host's newest 20 boots stay
    memledger prune --older-than 52w --keep-per-host 50 --dry-run
    memledger prune --older-than 26w --json --db postgresql+psycopg://memledger@fleetdb/memledger
"""


def _report_lines(report: PruneReport, where: str, rules: str) -> list[str]:
    verb = "would remove" if report.dry_run else "removed"
    return [f"{where}: {verb} the boots {rules}:",
            f"  boots            {report.boots}",
            f"  captures         {report.captures} ({report.capture_bytes:,} bytes)",
            f"  runtime batches  {report.runtime_batches}",
            f"  hosts            {report.hosts}"]


@click.command("prune", epilog=PRUNE_EXAMPLES)
@click.option("--older-than", "older_than", metavar="DURATION",
              envvar="MEMLEDGER_PRUNE_OLDER_THAN", show_envvar=True,
              help="Remove boots captured longer ago than this (90d, 12w, 2160h).")
@click.option("--keep-per-host", "keep", metavar="N",
              envvar="MEMLEDGER_PRUNE_KEEP_PER_HOST", show_envvar=True,
              help="Remove each host's boots past its newest N (by capture time).")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as a JSON object.")
@DB_OPTION
def prune_cmd(older_than: str | None, keep: str | None, dry_run: bool, as_json: bool,
              db: str | None) -> None:
    """Remove old boots from the store, with their ledgers, events, raw captures and
    runtime batches. A boot goes when either rule given removes it; with --older-than,
    runtime batches of boots never stored and hosts left with nothing, both older than
    the cutoff, go too. Removes 500 boots per transaction: ingest goes on meanwhile."""
    if older_than is None and keep is None:
        fail("prune needs --older-than DURATION, --keep-per-host N, or both")
    age: timedelta | None = None
    if older_than is not None:
        try:
            seconds = parse_duration(older_than)
        except ValueError as exc:
            fail(f"--older-than {exc}")
        if seconds <= 0:
            fail(f"--older-than {older_than!r}: must be more than 0")
        age = timedelta(seconds=seconds)
    n: int | None = None
    if keep is not None:
        if not keep.strip().isdigit() or int(keep) < 1:
            fail(f"--keep-per-host {keep!r}: must be a whole number, at least 1")
        n = int(keep)
    now = datetime.now(UTC)
    with open_store(db, create=False) as engine:
        upgrade(engine)
        report = prune(engine, older_than=age, keep=n, now=now, dry_run=dry_run)
    cutoff = None if age is None else now - age
    if as_json:
        click.echo(json.dumps({"database": display_url(engine.url),
                               "captured_before": None if cutoff is None
                               else cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "keep_per_host": n, **report.as_dict()}, indent=2))
        return
    rules = " or ".join(r for r in (
        cutoff and f"captured before {cutoff:%Y-%m-%d %H:%M:%S} UTC",
        n and f"past the newest {n} of their host") if r)
    for line in _report_lines(report, display_url(engine.url), rules):
        click.echo(line)


@click.group()
def db() -> None:
    """The store's schema: which revision it is at, and upgrading it."""


# `memledger db status`'s exit code when the schema is not this memledger's (behind, empty
# or newer); 1 stays what every command exits with when the store cannot be read.
NOT_CURRENT = 3

_ADVICE = {"current": "current",
           "behind": "behind (run `memledger db upgrade`)",
           "newer": "newer than this memledger (upgrade memledger)",
           "empty": "empty (`memledger db upgrade` creates the schema)"}


@db.command("status", epilog="\b\nexamples:\n    memledger db status\n"
            "    memledger db status --json --db postgresql+psycopg://memledger@fleetdb/memledger\n"
            "    memledger db status || memledger db upgrade")
@DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def status(db: str | None, as_json: bool) -> None:
    """Say the store's schema revision and this memledger's. Exit 0 when they are the
    same, 3 when the store is behind, empty or newer, 1 when it cannot be read."""
    with open_store(db, create=False) as engine:
        rev = current_revision(engine)
        state = schema_state(engine)
    out: dict[str, Any] = {"database": display_url(engine.url), "revision": rev, "head": HEAD,
                           "state": state}
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"{out['database']}: schema {rev or 'none'}, this memledger's {HEAD}: "
                   f"{_ADVICE[state]}")
    sys.exit(0 if state == "current" else NOT_CURRENT)


@db.command("upgrade", epilog="\b\nexamples:\n    memledger db upgrade\n"
            "    memledger db upgrade --db postgresql+psycopg://memledger@fleetdb/memledger")
@DB_OPTION
def upgrade_cmd(db: str | None) -> None:
    """Bring the store's schema to this memledger's (on PostgreSQL under the advisory lock
    every daemon takes to migrate, so any number may run at once). Every command that
    writes does this by itself; this one does only it, and says from which revision."""
    with open_store(db, create=False) as engine:
        state = schema_state(engine)
        before = current_revision(engine)
        if state == "newer":
            fail(f"{display_url(engine.url)}: schema {before} is newer than this "
                 f"memledger's {HEAD}: upgrade memledger", 1)
        upgrade(engine)
        after = current_revision(engine)
    if before == after:
        click.echo(f"{display_url(engine.url)}: schema {after}, already current")
    else:
        click.echo(f"{display_url(engine.url)}: schema {before or 'none'} → {after}")
