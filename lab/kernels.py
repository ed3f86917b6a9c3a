"""Debian kernel images for the lab, one or two per kernel era a fleet runs, into a cache.

Nothing is installed on the host and the system's apt sources are never changed: the
suites the lab needs (bullseye to experimental) are listed in a private apt state under
``CACHE/apt`` that points at the Debian archive and security mirrors this machine's apt
already uses. Each package is downloaded there with ``apt-get download NAME/SUITE``, its
vmlinuz (``./boot/vmlinuz-*`` up to 6.x, ``./usr/lib/modules/<release>/vmlinuz`` in 7.x's
``linux-binary-*``), config and System.map are unpacked into
``CACHE/kernels/<release>/`` with a ``package.json``, and the .deb is deleted.

:data:`ERAS` says which kernels stand for which era and what each one shows; choosing
from the archive's package lists is pure (:func:`choose_default`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = (
    "ERAS",
    "AptState",
    "CachedKernel",
    "Era",
    "KernelFetchError",
    "cached_kernels",
    "choose_default",
    "default_cache_dir",
    "era_of",
    "fetch_kernel",
    "release_of",
    "system_mirrors",
)

_LISTS_MAX_AGE = 24 * 3600


class KernelFetchError(Exception):
    """A kernel package could not be listed, downloaded or unpacked."""


@dataclass(frozen=True, slots=True)
class Era:
    """A kernel era: which packages stand for it, where they come from, what it shows."""

    name: str
    suites: tuple[str, ...]  # the suites whose package lists are searched, in apt's names
    pattern: str  # a package name of this era (full match); group "release"
    pick: tuple[str, ...]  # "oldest", "newest", "cloud" (the newest's cloud twin)
    shows: str

    def matches(self, name: str) -> re.Match[str] | None:
        return re.fullmatch(self.pattern, name)


# What each era shows, with the commits behind it:
# * 5.10: before a4b0bf6a40f3 ("x86/efi: defer freeing of boot services memory", v7.0)
#   efi_free_boot_services() runs from start_kernel through memblock_free_late(), which
#   skips pages whose struct pages are still deferred (the node's highest zone past its
#   first section: DMA32 on 2 GiB, none of DMA32 on 8 GiB) yet counts them in totalram;
#   and before f1d4d47c5851 ("x86/setup: Always reserve the first 1M of RAM", v5.13) it
#   frees boot-services memory below 1 MiB too.
# * 5.10-lts: Debian's bullseye-security kernels from ABI 44 (5.10.257-1, upstream 5.10.253)
#   carry a4b0bf6a40f3: free_reserved_area() at arch_initcall and its Freeing line, but
#   not f1d4d47c5851, so the regions below 1 MiB are freed (and counted) too. ABI 43 and
#   older are the 5.10 era.
# * 6.1, 6.12: Debian's backport of a4b0bf6a40f3: free_reserved_area() at arch_initcall
#   and its "Freeing EFI boot services memory" line.
# * 7.x: the E820 type names of 5668a64622cf ("System RAM ==> device reserved"), the
#   v6.16 memblock fields ("nid=-1 flags=0"), and 259e3e6f9382 ("efi: Tag memblock
#   reservations of boot services regions as RSRV_KERN", v7.1).
ERAS: tuple[Era, ...] = (
    Era("5.10", ("bullseye",), r"linux-image-(?P<release>5\.10\.0-(?:[1-3]?\d|4[0-3])-amd64)", ("newest",),
        "before the 2026 fix: memblock_free_late leaks deferred pages on 2 GiB (not on "
        "8 GiB) and frees below 1 MiB"),
    Era("5.10-lts", ("bullseye-security",),
        r"linux-image-(?P<release>5\.10\.0-(?:4[4-9]|[5-9]\d|[1-9]\d\d+)-amd64)", ("newest",),
        "the 2026 fix backported to 5.10: the arch_initcall free and its Freeing line, still "
        "freeing below 1 MiB"),
    Era("6.1", ("bookworm", "bookworm-security"), r"linux-image-(?P<release>6\.1\.0-\d+-amd64)",
        ("oldest", "newest"), "the 2026 fix backported: the arch_initcall free and its Freeing line"),
    Era("6.12", ("bookworm-security",),
        r"linux-image-(?P<release>6\.12\.\d+\+deb12-(?:cloud-)?amd64)", ("newest", "cloud"),
        "the Freeing line; efi_mem_reserve splits as 'usable ==> reserved'; the cloud flavour"),
    Era("6.12-trixie", ("trixie",), r"linux-image-(?P<release>6\.12\.\d+\+deb13-amd64)", ("newest",),
        "Debian 13's build of the same series"),
    Era("7.x", ("sid",), r"linux-binary-(?P<release>7\.\d+\.\d+\+deb\d+-amd64)", ("newest",),
        "v7.0 E820 names, v6.16 memblock fields, efi_mem_reserve kept as RSRV_KERN (v7.1)"),
    Era("7.x-rc", ("experimental",), r"linux-binary-(?P<release>7\.\d+(?:\.\d+)?-amd64)", ("newest",),
        "the newest release candidate Debian ships"),
)


def era_of(name: str) -> Era | None:
    """The era a package name belongs to, or None."""
    return next((e for e in ERAS if e.matches(name)), None)


def release_of(name: str) -> str | None:
    """``linux-binary-7.2.13+deb14-amd64`` → ``7.2.13+deb14-amd64``; None if not a lab kernel."""
    for era in ERAS:
        if (m := era.matches(name.removesuffix("-unsigned"))) is not None:
            return m.group("release")
    return None


def _version_key(name: str) -> tuple[int, ...]:
    """The numbers of a release, in order: 6.1.0-47 < 6.1.0-56 < 6.12.117 < 7.3."""
    release = release_of(name) or name
    return tuple(int(n) for n in re.findall(r"\d+", release.split("+")[0].removesuffix("-amd64")))


def choose_default(names_by_suite: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """``(package, suite)`` pairs of the default lab set from each suite's package names (pure)."""
    chosen: list[tuple[str, str]] = []
    for era in ERAS:
        found: dict[str, str] = {}
        for suite in era.suites:
            for name in names_by_suite.get(suite, ()):
                if era.matches(name) is not None:
                    found.setdefault(name, suite)
        generic = sorted((n for n in found if "-cloud-" not in n), key=_version_key)
        if not generic:
            continue
        picks = []
        for how in era.pick:
            if how == "oldest":
                picks.append(generic[0])
            elif how == "newest":
                picks.append(generic[-1])
            elif how == "cloud":
                twin = generic[-1].replace("-amd64", "-cloud-amd64")
                clouds = sorted((n for n in found if "-cloud-" in n), key=_version_key)
                if twin in found:
                    picks.append(twin)
                elif clouds:
                    picks.append(clouds[-1])
        chosen += [(n, found[n]) for n in dict.fromkeys(picks)]
    return chosen


@dataclass(frozen=True, slots=True)
class CachedKernel:
    release: str
    package: str
    version: str
    flavour: str
    vmlinuz: str
    config: str | None
    era: str | None = None
    suite: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def default_cache_dir() -> Path:
    """``$MEMLEDGER_LAB_CACHE``; else /var/cache/memledger/lab for root, else XDG's cache."""
    env = os.environ.get("MEMLEDGER_LAB_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/memledger/lab")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "memledger" / "lab"


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload, no-any-return]
    except FileNotFoundError:
        raise KernelFetchError(f"{argv[0]} not found: fetching kernels needs Debian's apt") from None


def system_mirrors() -> dict[str, str]:
    """The Debian archive and security mirrors this machine's apt uses, by role.

    Read through apt itself (``apt-get indextargets``), so one-line and deb822 sources
    both count. Roles: ``archive`` (a suite like bookworm or bookworm-updates) and
    ``security`` (a ``*-security`` suite).
    """
    proc = _run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)"])
    mirrors: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        uri, _, suite = line.strip().partition(" ")
        if not uri or not suite:
            continue
        role = "security" if suite.endswith("-security") else "archive"
        if not suite.endswith(("-backports", "-proposed-updates")):
            mirrors.setdefault(role, uri.rstrip("/"))
    if "archive" not in mirrors:
        raise KernelFetchError("apt knows no Debian archive (run `apt-get update` once, or add "
                               "the Debian archive to apt's sources)")
    return mirrors


@dataclass(slots=True)
class AptState:
    """A private apt state for the lab's suites: its own sources, lists and archives."""

    root: Path
    suites: tuple[str, ...] = field(default_factory=lambda: tuple(dict.fromkeys(
        s for era in ERAS for s in era.suites)))

    def options(self) -> list[str]:
        r = self.root
        return ["-o", f"Dir::Etc::SourceList={r / 'sources.list'}",
                "-o", f"Dir::Etc::SourceParts={r / 'sources.list.d'}",
                "-o", f"Dir::Etc::Preferences={r / 'preferences'}",
                "-o", f"Dir::Etc::PreferencesParts={r / 'preferences.d'}",
                "-o", f"Dir::State={r / 'state'}",
                "-o", f"Dir::Cache={r / 'cache'}",
                "-o", "Dir::State::status=/var/lib/dpkg/status",
                "-o", "APT::Get::List-Cleanup=false"]

    def sources(self, mirrors: Mapping[str, str]) -> str:
        """The private sources.list (pure)."""
        keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
        opts = f" [signed-by={keyring}]" if keyring.is_file() else ""
        lines = []
        for suite in self.suites:
            role = "security" if suite.endswith("-security") else "archive"
            if role in mirrors:
                lines.append(f"deb{opts} {mirrors[role]} {suite} main")
        return "\n".join(lines) + "\n"

    def update(self, force: bool = False) -> None:
        """Write the sources and fetch the package lists (once a day unless forced)."""
        stamp = self.root / "updated"
        sources = self.sources(system_mirrors())
        current = (self.root / "sources.list").read_text() if (self.root / "sources.list").is_file() else ""
        fresh = stamp.is_file() and time.time() - stamp.stat().st_mtime < _LISTS_MAX_AGE
        if fresh and current == sources and not force:
            return
        for d in ("sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text(sources)
        for p in [self.root, *self.root.rglob("*")]:  # apt's _apt user reads and writes here
            if p.is_dir():
                p.chmod(0o755)
        proc = _run(["apt-get", *self.options(), "-q", "update"])
        if proc.returncode != 0 or "\nE: " in "\n" + proc.stderr:
            err = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "W:"))] or ["?"]
            raise KernelFetchError(f"apt-get update of the lab's suites failed: {err[0]}")
        stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")

    def names_by_suite(self) -> dict[str, list[str]]:
        """Kernel package names (linux-image-*, linux-binary-*) in each suite's lists."""
        out: dict[str, list[str]] = {}
        lists = self.root / "state" / "lists"
        for suite in self.suites:
            names: list[str] = []
            # apt may keep its lists compressed (lz4, gz, …): apt-helper reads every kind.
            for f in sorted(lists.glob(f"*_dists_{suite}_main_binary-amd64_Packages*")):
                text = _run(["/usr/lib/apt/apt-helper", "cat-file", str(f)]).stdout
                names += [ln[9:].strip() for ln in text.splitlines()
                          if ln.startswith(("Package: linux-image-", "Package: linux-binary-"))]
            out[suite] = names
        return out

    def download(self, package: str, suite: str | None, dest: Path) -> Path:
        """``apt-get download`` into ``dest``; the .deb's path."""
        target = f"{package}/{suite}" if suite else package
        proc = _run(["apt-get", *self.options(), "download", "-q", target], cwd=dest)
        debs = list(dest.glob("*.deb"))
        if proc.returncode != 0 or not debs:
            last = (proc.stderr.strip().splitlines() or ["no .deb"])[-1]
            raise KernelFetchError(f"apt-get download {target} failed: {last}")
        return debs[0]


def _read_meta(d: Path) -> CachedKernel | None:
    try:
        meta = json.loads((d / "package.json").read_text())
        return CachedKernel(**meta)
    except (OSError, ValueError, TypeError):
        return None


def cached_kernels(cache: str | os.PathLike[str]) -> list[CachedKernel]:
    """The kernels unpacked in ``cache``, oldest release first."""
    root = Path(cache) / "kernels"
    if not root.is_dir():
        return []
    found = [k for d in root.iterdir() if d.is_dir() and (k := _read_meta(d)) is not None
             and Path(k.vmlinuz).is_file()]
    return sorted(found, key=lambda k: (_version_key(k.package), k.release))


def _extract_boot(deb: Path, dest: Path, release: str) -> dict[str, Path]:
    """Unpack vmlinuz, config and System.map from the .deb into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    wanted = {f"boot/vmlinuz-{release}": "vmlinuz", f"boot/config-{release}": "config",
              f"boot/System.map-{release}": "System.map",
              f"usr/lib/modules/{release}/vmlinuz": "vmlinuz",
              f"usr/lib/modules/{release}/config": "config",
              f"usr/lib/modules/{release}/System.map": "System.map"}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                kind = wanted.get(member.name.removeprefix("./"))
                if kind is None or not member.isfile():
                    continue
                src = tar.extractfile(member)
                assert src is not None
                with open(dest / kind, "wb") as out:
                    shutil.copyfileobj(src, out)
                found[kind] = dest / kind
    if proc.returncode != 0:
        raise KernelFetchError(f"{deb.name}: dpkg-deb --fsys-tarfile failed")
    return found


def fetch_kernel(package: str, cache: str | os.PathLike[str], suite: str | None = None,
                 apt: AptState | None = None) -> CachedKernel:
    """Download ``package`` (from ``suite``) and unpack its kernel into the cache (idempotent)."""
    era = era_of(package.removesuffix("-unsigned"))
    if era is None:
        raise KernelFetchError(f"{package}: not a Debian amd64 kernel package of a lab era "
                               f"({', '.join(e.name for e in ERAS)})")
    release = release_of(package)
    assert release is not None  # the era matched
    target = Path(cache) / "kernels" / release
    if (existing := _read_meta(target)) is not None and Path(existing.vmlinuz).is_file():
        return existing
    if apt is None:  # a caller that brings its own state has brought its lists up to date
        apt = AptState(Path(cache) / "apt")
        apt.update()
    Path(cache).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        os.chmod(tmp, 0o755)  # so that apt's _apt user may write there
        deb = apt.download(package, suite, Path(tmp))
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        stage = Path(tmp) / "kernel"
        files = _extract_boot(deb, stage, release)
        if "vmlinuz" not in files:
            raise KernelFetchError(f"{deb.name}: no vmlinuz for {release} inside")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), target)
    kernel = CachedKernel(release=release, package=package, version=version,
                          flavour="cloud-amd64" if "-cloud-" in release else "amd64",
                          vmlinuz=str(target / "vmlinuz"),
                          config=str(target / "config") if "config" in files else None,
                          era=era.name, suite=suite)
    (target / "package.json").write_text(json.dumps(kernel.as_dict(), indent=2) + "\n")
    return kernel
