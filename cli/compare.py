"""``memledger compare``: two kernels (or sets of them) side by side, from any store."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import click
from memledger.cli.dboption import DB_OPTION, open_store, use_schema
from memledger.cli.errors import fail
from memledger.cli.units import parse_duration, parse_size
from memledger.exporters.report import WORST, to_html, to_json, to_markdown, to_table
from memledger.exporters.terminal import console
from memledger.store.compare import FIGURES, WHERE_KEYS, Thresholds, compare
from memledger.store.db import display_url

__all__ = ("compare_cmd",)

COMPARE_EXAMPLES = """
\b
examples:
    memledger compare --baseline 6.1.0-47-amd64 --candidate '6.12.*'
    memledger compare --baseline 6.1.0-47-amd64 --candidate 6.12.117+deb12-amd64 \\
        --where product='Standard PC (Q35 + ICH9, 2009)' --format markdown
    memledger compare --baseline 6.1.0-47-amd64 --candidate 6.12.117+deb12-amd64 \\
        --threshold reclaimed=8MiB --format html -o report.html
    memledger compare --baseline '6.1.*' --candidate 5.10.0-32-amd64 \\
        --where firmware_vendor='EDK II' --include-all --format json | jq .verdict
    memledger compare --baseline 6.1.0-47-amd64 --candidate 6.12.117+deb12-amd64 \\
        --since 30d --host 'web-*' --worst 20 --format markdown
\b
exit status: 0 no regression, 1 a regression, 2 bad input
"""

_NAMES = ", ".join(f.name for f in FIGURES)


def _where(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in WHERE_KEYS:
            fail(f"--where {pair!r}: expected KEY=VALUE with KEY one of {', '.join(WHERE_KEYS)}")
        out[key] = value
    return out


def _when(option: str, value: str | None, now: datetime) -> datetime | None:
    """An ISO 8601 date or time (UTC unless it says), or a duration before now (30d)."""
    if value is None:
        return None
    try:
        return now - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r}: expected a date or time (2026-11-30, 2026-11-30T12:00Z) "
             "or a duration before now (30d, 12h)")
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _worst(value: str) -> int | None:
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        fail(f"--worst {value!r}: expected a number of hosts (1 or more) or all")
    return int(value)


def _thresholds(pairs: tuple[str, ...], absolute: str, relative: str) -> Thresholds:
    try:
        t = Thresholds(absolute=parse_size(absolute),
                       relative=float(relative.rstrip("%")) / 100)
    except ValueError as exc:
        fail(f"threshold: {exc}")
    names = {f.name: f for f in FIGURES}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in names:
            fail(f"--threshold {pair!r}: expected FIGURE=VALUE with FIGURE one of {_NAMES}")
        try:
            t.per_figure[name] = float(parse_size(value)) if names[name].unit == "bytes" \
                else float(value)
        except ValueError as exc:
            fail(f"--threshold {pair!r}: {exc}")
    return t


@click.command("compare", epilog=COMPARE_EXAMPLES)
@click.option("--baseline", required=True, metavar="SEL", help="Kernel release or glob.")
@click.option("--candidate", required=True, metavar="SEL", help="Kernel release or glob.")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help=f"Only boots with this {', '.join(WHERE_KEYS)} (repeatable).")
@click.option("--threshold", "per_figure", multiple=True, metavar="FIGURE=VALUE",
              help=f"A figure's own threshold ({_NAMES}); sizes like 4MiB.")
@click.option("--abs-threshold", default="1MiB", show_default=True,
              help="Deltas this small are 'same'.")
@click.option("--rel-threshold", default="2%", show_default=True,
              help="... or this share of the baseline median, if larger.")
@click.option("--since", metavar="WHEN", help="Only boots captured at or after WHEN: a date or "
              "time (2026-11-30, UTC unless it says), or a duration before now (30d).")
@click.option("--until", metavar="WHEN", help="Only boots captured before WHEN (as --since).")
@click.option("--host", "host_globs", multiple=True, metavar="GLOB",
              help="Only hosts whose name or machine id matches GLOB (repeatable).")
@click.option("--worst", "worst", default=str(WORST), show_default=True, metavar="N|all",
              help="The table and markdown list the N worst paired hosts (and at most N "
                   "values and left-out boots) and count the rest; json and html list all.")
@click.option("--include-all", is_flag=True,
              help="Count every boot with a known value, also those that cannot measure "
              "the figure (efi=debug, kexec, BIOS, a truncated log).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown", "html"]),
              default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file.")
@DB_OPTION
def compare_cmd(baseline: str, candidate: str, where: tuple[str, ...], per_figure: tuple[str, ...],
                abs_threshold: str, rel_threshold: str, since: str | None, until: str | None,
                host_globs: tuple[str, ...], worst: str, include_all: bool, fmt: str,
                output: str | None, db: str | None) -> None:
    """Compare the ledgers of the boots of two kernel releases: a verdict with its reasons
    first, then for every figure the boots (or paired hosts) that measure it, median,
    p10, p90, change, threshold and verdict; the paired hosts, anomaly codes, what else
    differs, and every boot left out of a figure with why. Exits 1 on a regression."""
    filters = _where(where)
    thresholds = _thresholds(per_figure, abs_threshold, rel_threshold)
    now = datetime.now(UTC)
    start, end = _when("--since", since, now), _when("--until", until, now)
    shown = _worst(worst)
    with open_store(db, create=False) as engine:
        use_schema(engine, write=False)
        # JSON and HTML keep every host and boot; the HTML draws every boot.
        result = compare(engine, baseline, candidate, filters, thresholds, include_all,
                         since=start, until=end, host_globs=host_globs,
                         listed=shown if fmt in ("table", "markdown") else None,
                         boots=fmt == "html")
    scope = [*where, *(f"--host {g}" for g in host_globs)]
    if since:
        scope.append(f"--since {since}")
    if until:
        scope.append(f"--until {until}")
    for side in (result.baseline, result.candidate):
        if not side["boots"]:
            fail(f"no stored boots match {side['selector']!r}"
                 + (f" with {', '.join(scope)}" if scope else "")
                 + f" in {display_url(engine.url)}")
    if fmt == "table" and output:
        with open(output, "w") as fh:
            console(file=fh).print(to_table(result, shown))
    elif fmt == "table":
        console().print(to_table(result, shown))
    else:
        try:
            text = (to_markdown(result, shown) if fmt == "markdown" else
                    {"json": to_json, "html": to_html}[fmt](result))
        except ImportError as exc:  # matplotlib is the optional "report" extra
            fail(f"--format html needs matplotlib ({exc}); pip install 'memledger[report]'")
        if output:
            with open(output, "w") as fh:
                fh.write(text)
        else:
            click.echo(text, nl=not text.endswith("\n"))
    if result.regressions:
        click.echo(f"memledger: regression in {', '.join(result.regressions)}", err=True)
        sys.exit(1)
