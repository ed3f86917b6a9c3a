"""``memledger boot-setup``: print, install or remove the GRUB drop-in of tracer/bootsetup.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import click
from memledger.cli.errors import fail
from memledger.store.files import atomic_write
from memledger.tracer.bootsetup import (
    DROPIN,
    BootSetupError,
    kernel_config,
    plan,
    render_dropin,
    shell_words,
)

__all__ = ("boot_setup",)

VERSION = version("memledger")

BOOT_SETUP_EXAMPLES = f"""
\b
examples:
    memledger boot-setup                        # print the drop-in for this kernel
    memledger boot-setup --apply                # install {DROPIN}, run update-grub
    memledger boot-setup --apply --append crashkernel=256M
    memledger boot-setup --revert               # remove it, run update-grub
    memledger boot-setup --root /mnt/image --release 6.1.0-50-amd64 --apply
\b
After the next boot, `cat /proc/cmdline` shows the arguments; memledger's ledger then
has memblock=debug ranges and boot-time trace events (fidelity: memblock_debug,
boot_trace). efi=debug is refused: the kernel frees no boot-services memory with it.
"""


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _update_grub(root: Path, run: bool) -> None:
    if not run:
        click.echo("not running update-grub (--no-update-grub); run it before rebooting", err=True)
        return
    if root != Path("/"):
        cmd = ["chroot", str(root), "update-grub"]
    elif shutil.which("update-grub"):
        cmd = ["update-grub"]
    else:
        click.echo("update-grub not found: regenerate grub.cfg yourself (grub-mkconfig)", err=True)
        return
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"{' '.join(cmd)} failed (exit {proc.returncode}): {last}", 1)
    click.echo(f"ran {' '.join(cmd)}", err=True)


@click.command("boot-setup", epilog=BOOT_SETUP_EXAMPLES)
@click.option("--apply", "action", flag_value="apply", help=f"Write {DROPIN} (if it changed) "
              "and run update-grub.")
@click.option("--revert", "action", flag_value="revert", help="Remove it and run update-grub.")
@click.option("--append", "extra", multiple=True, metavar="ARG",
              help="Another kernel argument to add (repeatable); efi=debug is refused.")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="System to set up (an image mounted elsewhere; update-grub runs in a chroot).")
@click.option("--release", help="Kernel release whose /boot/config-RELEASE decides the "
              "tracing arguments (default: the running kernel's).")
@click.option("--update-grub/--no-update-grub", "run_update", default=True, show_default=True)
def boot_setup(action: str | None, extra: tuple[str, ...], root: str, release: str | None,
               run_update: bool) -> None:
    """Set up the kernel command line so that the next boot is captured well:
    memblock=debug, a 16 MiB log buffer and boot-time tracing, as a GRUB drop-in."""
    base = Path(root)
    dropin = base / DROPIN.lstrip("/")
    if action == "revert":
        if not dropin.exists():
            click.echo(f"{dropin}: not there; nothing to undo", err=True)
            return
        dropin.unlink()
        click.echo(f"removed {dropin}", err=True)
        _update_grub(base, run_update)
        return
    release = release or os.uname().release
    config_text = _read(base / "boot" / f"config-{release}")
    current = shell_words(_read(Path("/proc/cmdline")) or "") if base == Path("/") else []
    try:
        p = plan(kernel_config(config_text) if config_text is not None else None, current, extra)
        text = render_dropin(p.args, VERSION)
    except BootSetupError as exc:
        fail(str(exc))
    for note in p.notes:
        click.echo(f"note: {note}", err=True)
    if action != "apply":
        click.echo(text, nl=False)
        in_effect = [a for a in p.args if a in current]
        if current:
            click.echo(f"# running kernel already has {len(in_effect)} of {len(p.args)} of these",
                       err=True)
        return
    if _read(dropin) == text:
        # Still regenerate grub.cfg: an earlier update-grub may have failed.
        click.echo(f"{dropin}: already up to date", err=True)
        _update_grub(base, run_update)
        return
    try:
        dropin.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(dropin), text.encode(), 0o644)
    except OSError as exc:
        fail(f"{dropin}: {os.strerror(exc.errno or 0) or exc}", 1)
    click.echo(f"wrote {dropin} ({len(p.args)} arguments)", err=True)
    _update_grub(base, run_update)
