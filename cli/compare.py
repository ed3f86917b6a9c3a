"""``memledger compare``: two kernels (or sets of them) side by side, from any store."""

from __future__ import annotations

import sys

import click
from memledger.cli.dboption import DB_OPTION, open_store, use_schema
from memledger.cli.errors import fail
from memledger.cli.units import parse_size
from memledger.exporters.report import to_html, to_json, to_markdown, to_table
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
@click.option("--include-all", is_flag=True,
              help="Count every boot with a known value, also those that cannot measure "
              "the figure (efi=debug, kexec, BIOS, a truncated log).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown", "html"]),
              default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file.")
@DB_OPTION
def compare_cmd(baseline: str, candidate: str, where: tuple[str, ...], per_figure: tuple[str, ...],
                abs_threshold: str, rel_threshold: str, include_all: bool, fmt: str,
                output: str | None, db: str | None) -> None:
    """Compare the ledgers of the boots of two kernel releases: a verdict with its reasons
    first, then for every figure the boots (or paired hosts) that measure it, median,
    p10, p90, change, threshold and verdict; the paired hosts, anomaly codes, what else
    differs, and every boot left out of a figure with why. Exits 1 on a regression."""
    filters = _where(where)
    thresholds = _thresholds(per_figure, abs_threshold, rel_threshold)
    with open_store(db, create=False) as engine:
        use_schema(engine, write=False)
        result = compare(engine, baseline, candidate, filters, thresholds, include_all)
    for side in (result.baseline, result.candidate):
        if not side["boots"]:
            fail(f"no stored boots match {side['selector']!r}"
                 + (f" with {', '.join(where)}" if where else "")
                 + f" in {display_url(engine.url)}")
    if fmt == "table" and output:
        with open(output, "w") as fh:
            console(file=fh).print(to_table(result))
    elif fmt == "table":
        console().print(to_table(result))
    else:
        try:
            text = {"json": to_json, "markdown": to_markdown, "html": to_html}[fmt](result)
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
