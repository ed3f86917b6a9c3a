"""``memledger lab``: boot kernels under emulated EFI firmware and read their ledgers."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import click
from memledger.cli.errors import fail
from memledger.cli.inputs import InputError, load
from memledger.cli.render import render_ledger
from memledger.exporters.terminal import console as terminal
from memledger.exporters.terminal import text
from memledger.lab.boot import BootRequest, LabError, run_boot
from memledger.lab.firmware import FIRMWARES, FirmwareError, fetch_ovmf, find_ovmf
from memledger.lab.initramfs import InitramfsError
from memledger.lab.kernels import (
    ERAS,
    AptState,
    CachedKernel,
    KernelFetchError,
    cached_kernels,
    choose_default,
    default_cache_dir,
    fetch_kernel,
)
from memledger.lab.matrix import CONFIGS, MatrixOutcome, config_by_name, plan, run_matrix
from memledger.ledger.compute import compute_ledger
from rich.table import Table

__all__ = ("lab",)

_MEMORY = re.compile(r"^\d+[MG]$")
_RUNTIME_ERRORS = (LabError, FirmwareError, InitramfsError, KernelFetchError, OSError)

BOOT_EXAMPLES = """
\b
examples:
    memledger lab kernels --fetch               # a Debian kernel of every era, 5.10 to 7.x
    memledger lab boot --kernel 6.12.117+deb12-amd64
    memledger lab boot --kernel 5.10.0-32-amd64 --cmdline memblock=debug   # the deferred-init leak
    memledger lab boot --kernel /boot/vmlinuz-6.1.0-47-amd64 --cmdline memblock=debug --out boot1
    memledger lab boot --kernel 6.12.117+deb12-cloud-amd64 --trace --memory 8G --json
    memledger lab boot --kernel 7.2.13+deb14-amd64 --firmware seabios   # non-EFI control
"""

MATRIX_EXAMPLES = """
\b
examples:
    memledger lab matrix --out /tmp/boots -j 2            # every cached kernel, every config
    memledger lab matrix --kernel 6.12.117+deb12-amd64 --config default --config efidebug --out b
"""


def _cache_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Lab cache (kernels, OVMF, initramfs). Default: $MEMLEDGER_LAB_CACHE, "
                             "/var/cache/memledger/lab for root, else ~/.cache/memledger/lab.")(f)


def _resolve_kernel(kernel: str, cache: Path) -> tuple[Path, dict[str, str | None] | None]:
    """A vmlinuz path, or the release of a kernel in the cache."""
    p = Path(kernel)
    if p.is_file():
        return p, None
    for k in cached_kernels(cache):
        if kernel in (k.release, k.package):
            return Path(k.vmlinuz), k.as_dict()
    known = ", ".join(k.release for k in cached_kernels(cache)) or "none; run `memledger lab kernels --fetch`"
    fail(f"--kernel {kernel}: no such file, and no cached kernel with that release (cached: {known})", 2)


@click.group()
def lab() -> None:
    """Boot kernels under QEMU with OVMF (or SeaBIOS) and read their ledgers."""


@lab.command(epilog=BOOT_EXAMPLES)
@click.option("--kernel", required=True, help="A vmlinuz file, or the release of a cached kernel.")
@click.option("--cmdline", default="", help="Kernel arguments added to the console arguments.")
@click.option("--trace", is_flag=True, help="Add boot-time function tracing and kprobe events.")
@click.option("--memory", default="2G", show_default=True, help="Guest memory (e.g. 2G, 8G, 512M).")
@click.option("--firmware", type=click.Choice(FIRMWARES), default="ovmf", show_default=True)
@click.option("--smp", type=click.IntRange(1, 64), default=2, show_default=True, help="Guest CPUs.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="auto: KVM when a probe guest really runs under it, else TCG.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds before giving up.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Boot folder (root/, console.log, cmdline.txt, lab.json). "
                   "Default: ./lab-<release>-<time>.")
@click.option("--json", "as_json", is_flag=True, help="Print the ledger as JSON.")
@_cache_option
def boot(kernel: str, cmdline: str, trace: bool, memory: str, firmware: str, smp: int, accel: str,
         timeout: float, out: Path | None, as_json: bool, cache: Path | None) -> None:
    """Boot KERNEL under emulated firmware, capture the boot, and print its ledger."""
    if not _MEMORY.match(memory):
        fail(f"--memory {memory}: give a size like 2G or 512M", 2)
    cache = cache or default_cache_dir()
    vmlinuz, package = _resolve_kernel(kernel, cache)
    if out is None:
        stem = (package or {}).get("release") or vmlinuz.name.removeprefix("vmlinuz-") or "kernel"
        out = Path(f"lab-{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    req = BootRequest(kernel=vmlinuz, out=out, cache=cache, cmdline=cmdline, trace=trace, memory=memory,
                      firmware=firmware, smp=smp, accel=accel, timeout=timeout, package=package)
    err = terminal(stderr=True)
    try:
        with err.status(text(f"booting {vmlinuz} under {firmware} ({memory})…")):
            result = run_boot(req)
    except _RUNTIME_ERRORS as exc:
        fail(str(exc), 1)
    err.print(f"booted {result.lab.get('release') or vmlinuz} in {result.wall_seconds:.1f} s "
              f"({result.accel}); boot folder: {result.out}")
    try:
        evidence = load(str(result.root))
    except InputError as exc:
        fail(str(exc), 1)
    ledgers = [compute_ledger(ev).as_dict() for ev in evidence]
    if as_json:
        click.echo(json.dumps(ledgers[0] if len(ledgers) == 1 else ledgers, indent=2))
        return
    for d in ledgers:
        render_ledger(d, terminal())


def _kernel_table(kernels: list[CachedKernel], cache: Path) -> Table:
    table = Table(title=f"lab kernels in {cache}, by era")
    for col in ("era", "release", "suite", "package version"):
        table.add_column(col, no_wrap=True)
    table.add_column("what the era shows")
    for era in ERAS:
        mine = [k for k in kernels if k.era == era.name]
        for i, k in enumerate(mine or [None]):
            table.add_row(era.name if i == 0 else "", k.release if k else "(not fetched)",
                          (k.suite or "") if k else ", ".join(era.suites),
                          k.version if k else "", era.shows if i == 0 else "")
    for k in kernels:
        if k.era not in {e.name for e in ERAS}:
            table.add_row("(other)", k.release, k.suite or "", k.version, "")
    return table


KERNELS_EXAMPLES = """
\b
examples:
    memledger lab kernels                       # the eras, and what the cache holds of each
    memledger lab kernels --fetch               # the default kernel(s) of every era
    memledger lab kernels --package linux-image-5.10.0-30-amd64/bullseye
    memledger lab kernels --package linux-binary-7.2.13+deb14-cloud-amd64/sid --json
\b
Each suite comes from the Debian mirrors this machine's apt already uses, listed in a
private apt state under CACHE/apt: the system's sources are never changed.
"""


@lab.command(epilog=KERNELS_EXAMPLES)
@click.option("--fetch", is_flag=True, help="Fetch the default kernels of every era (and OVMF "
              "when it is not installed).")
@click.option("--package", "packages", multiple=True, metavar="NAME[/SUITE]",
              help="Fetch this linux-image or linux-binary package (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="List as JSON.")
@_cache_option
def kernels(fetch: bool, packages: tuple[str, ...], as_json: bool, cache: Path | None) -> None:
    """List the kernel eras and the kernels in the lab cache; fetch Debian kernels.

    Packages are downloaded, never installed: vmlinuz, config and System.map are unpacked
    into CACHE/kernels/<release>/.
    """
    cache = cache or default_cache_dir()
    wanted = [(name, suite or None) for name, _, suite in (p.partition("/") for p in packages)]
    try:
        if fetch or wanted:
            apt = AptState(cache / "apt")
            err = terminal(stderr=True)
            with err.status("reading the package lists of the lab's suites…"):
                apt.update()
            if fetch:
                wanted += [w for w in choose_default(apt.names_by_suite()) if w not in wanted]
                try:
                    find_ovmf(cache)
                except FirmwareError:
                    fetch_ovmf(cache)
            for name, suite in wanted:
                with err.status(text(f"fetching {name}…")):
                    k = fetch_kernel(name, cache, suite, apt)
                err.print(f"{name}: {k.release} ({k.version}, era {k.era})")
    except _RUNTIME_ERRORS as exc:
        fail(str(exc), 1)
    found = cached_kernels(cache)
    if as_json:
        click.echo(json.dumps({"eras": [{"name": e.name, "suites": list(e.suites), "shows": e.shows}
                                        for e in ERAS],
                               "kernels": [k.as_dict() for k in found]}, indent=2))
        return
    terminal().print(_kernel_table(found, cache))
    if not found:
        click.echo(f"no kernels in {cache}; fetch some with `memledger lab kernels --fetch`")


@lab.command(epilog=MATRIX_EXAMPLES)
@click.option("--kernel", "releases", multiple=True,
              help="A cached kernel's release (repeatable); default all.")
@click.option("--config", "configs", multiple=True, type=click.Choice([c.name for c in CONFIGS]),
              help="A configuration (repeatable); default all.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the boot folders, one per <release>-<config>.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Boots at a time.")
@click.option("--smp", type=click.IntRange(1, 64), default=2, show_default=True, help="Guest CPUs.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True)
@_cache_option
def matrix(releases: tuple[str, ...], configs: tuple[str, ...], out: Path, jobs: int, smp: int,
           accel: str, cache: Path | None) -> None:
    """Boot every configuration on every cached kernel and summarise the ledgers."""
    cache = cache or default_cache_dir()
    kernels_ = cached_kernels(cache)
    if releases:
        unknown = set(releases) - {k.release for k in kernels_}
        if unknown:
            fail(f"--kernel {', '.join(sorted(unknown))}: not in the lab cache {cache}", 2)
        kernels_ = [k for k in kernels_ if k.release in releases]
    if not kernels_:
        fail(f"no kernels in {cache}; fetch some with `memledger lab kernels --fetch`", 2)
    boots = plan(kernels_, [config_by_name(c) for c in configs] if configs else None)
    console = terminal(stderr=True)

    def done(o: MatrixOutcome) -> None:
        state = f"{o.result.wall_seconds:.1f} s" if o.result else f"FAILED: {o.error}"
        console.print(f"{o.boot.name}: {state}")

    try:
        outcomes = run_matrix(boots, out, cache, jobs=jobs, smp=smp, accel=accel, on_done=done)
    except _RUNTIME_ERRORS as exc:
        fail(str(exc), 1)
    table = Table(title=f"{len(outcomes)} lab boots in {out}")
    table.add_column("boot", no_wrap=True)
    for col in ("efi", "total KiB", "reclaimed KiB", "kept KiB", "leaked KiB"):
        table.add_column(col, justify="right")
    table.add_column("anomalies")
    failed = 0
    for o in outcomes:
        if o.result is None:
            failed += 1
            table.add_row(o.boot.name, "", "", "", "", "", "boot failed")
            continue
        d = compute_ledger(load(str(o.result.root))[-1]).as_dict()
        bs = d["efi_boot_services"]
        cells = [f"{v // 1024:,}" if v is not None else "-" for v in
                 (bs["total_bytes"], bs["reclaimed_bytes"], bs["kept_bytes"], bs["leaked_bytes"])]
        table.add_row(o.boot.name, str(d["firmware"]["efi"]), *cells,
                      ", ".join(a["code"] for a in d["anomalies"]) or "")
    terminal().print(table)
    if failed:
        fail(f"{failed} of {len(outcomes)} boots failed", 1)


GUEST_EXAMPLES = """
\b
examples:
    memledger lab guest-image                   # build (or reuse) the guest for this checkout
    memledger lab guest-image --checkout ~/src/memledger
\b
The first build runs debootstrap (about 2 minutes), builds the checkout's Debian package
twice (scripts/build-deb: the checkout's version and a newer one, about 3 minutes) and
installs the first in a provisioning boot under TCG; a rerun rebuilds only the layers
whose inputs changed, and prints the image path.
"""


@lab.command("guest-image", epilog=GUEST_EXAMPLES)
@click.option("--checkout", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="The memledger source tree to build the packages from.")
@_cache_option
def guest_image_cmd(checkout: Path, cache: Path | None) -> None:
    """Build the Debian 12 guest disk for the live-collection e2e test and print its path."""
    from memledger.lab.guest import guest_image, provision_boot, tool_missing

    cache = cache or default_cache_dir()
    if (tool := tool_missing()) is not None:
        fail(f"{tool} is not installed (scripts/install-system-deps installs the lab tools)", 2)
    log = cache / "guest" / "build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        ovmf = find_ovmf(cache)
        image = guest_image(cache, checkout.resolve(),
                            provision_boot(ovmf, cache / "guest" / "provision"), log)
    except _RUNTIME_ERRORS as exc:
        fail(str(exc), 1)
    click.echo(str(image))
