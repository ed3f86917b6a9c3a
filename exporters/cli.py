"""The ``memledger`` command."""

from __future__ import annotations

import json

import click
from memledger.exporters.bootsetupcli import boot_setup
from memledger.exporters.collect import collect
from memledger.exporters.comparecli import compare_cmd
from memledger.exporters.daemon import daemon
from memledger.exporters.errors import fail
from memledger.exporters.inputs import InputError, load
from memledger.exporters.lab import lab
from memledger.exporters.render import render_ledger
from memledger.exporters.storecli import boots, capture, ingest, reprocess_cmd
from memledger.store.ledger import compute_ledger
from rich.console import Console

__all__ = ("main",)

ANALYZE_EXAMPLES = """
\b
examples:
    memledger analyze /                       # this host: /dev/kmsg, /proc, /sys
    memledger analyze boot.tar.gz             # a capture file (memledger capture)
    memledger analyze capture/                # a captured tree (dmesg.txt, proc/, sys/)
    memledger analyze serial-console.log      # every boot in a console log
    journalctl -k -b all -o short-monotonic | memledger analyze -
    memledger analyze /sys/kernel/tracing/trace --json
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memledger")
def main() -> None:
    """Per-boot ledger of EFI boot-services and low memory on x86 Linux."""


@main.command(epilog=ANALYZE_EXAMPLES)
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per boot "
              "(a list when the input holds several boots).")
def analyze(path: str, as_json: bool) -> None:
    """Compute the ledger of every boot in PATH.

    PATH is a root directory (``/`` for this host, or a captured tree), a capture file
    written by ``memledger capture``, a kernel log file
    (dmesg, dmesg -r, /dev/kmsg records, journalctl -k), an ftrace ``trace`` file, or -
    for standard input.
    """
    try:
        evidence = load(path)
    except InputError as exc:
        fail(str(exc))
    ledgers = [compute_ledger(ev).as_dict() for ev in evidence]
    if as_json:
        payload = ledgers[0] if len(ledgers) == 1 else ledgers
        click.echo(json.dumps(payload, indent=2))
        return
    console = Console()
    for d in ledgers:
        render_ledger(d, console)


for command in (capture, ingest, boots, reprocess_cmd, daemon, collect, boot_setup, compare_cmd,
                lab):
    main.add_command(command)
