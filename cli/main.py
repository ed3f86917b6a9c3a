"""The ``memledger`` command."""

from __future__ import annotations

import gc
import importlib
import json

import click
from memledger.cli.errors import fail

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


# The other commands, imported only when used: the daemon, the store and the collector
# bring SQLAlchemy, prometheus-client and watchdog, which `analyze` does not need (about
# 0.5 s of start-up). This is click's documented lazy-loading pattern ("Lazily Loading
# Subcommands" in click's docs).
LAZY = {
    "capture": "memledger.cli.store:capture",
    "ingest": "memledger.cli.store:ingest",
    "boots": "memledger.cli.store:boots",
    "reprocess": "memledger.cli.store:reprocess_cmd",
    "prune": "memledger.cli.maintain:prune_cmd",
    "db": "memledger.cli.maintain:db",
    "daemon": "memledger.cli.daemon:daemon",
    "collect": "memledger.cli.collect:collect",
    "boot-setup": "memledger.cli.bootsetup:boot_setup",
    "compare": "memledger.cli.compare:compare_cmd",
    "lab": "memledger.cli.lab:lab",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY:
            module, _, attr = LAZY[cmd_name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    # Here, not at the top: the parsers and the ledger are 70 ms of start-up that the
    # other commands (compare, boots, the daemon) do not need.
    from memledger.cli.inputs import InputError, load
    from memledger.ledger.compute import compute_ledger

    # A one-shot command over 10⁵ records that form no reference cycles: the cyclic
    # collector would only walk them again and again (a fifth of the time; BENCHMARKS.md).
    gc.disable()
    try:
        evidence = load(path)
    except InputError as exc:
        fail(str(exc))
    ledgers = [compute_ledger(ev).as_dict() for ev in evidence]
    if as_json:
        payload = ledgers[0] if len(ledgers) == 1 else ledgers
        click.echo(json.dumps(payload, indent=2))
        return
    # Only for the table: rich costs 30 ms of start-up that --json does not need.
    from memledger.cli.render import render_ledger
    from memledger.exporters.terminal import console as terminal

    console = terminal()
    for d in ledgers:
        render_ledger(d, console)

