"""Debian kernel images for the lab, fetched with ``apt-get download`` into a cache.

Nothing is installed on the host: each package is downloaded, its ``./boot`` files
(vmlinuz, config, System.map) are unpacked into ``CACHE/kernels/<release>/`` with a
``package.json`` naming the package and version, and the .deb is then deleted.

The default set covers what fleets run on Debian 12: the oldest and the newest 6.1 ABI
that the archive still carries, the newest 6.12 (bookworm-security), and its cloud
flavour.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = (
    "CachedKernel",
    "KernelFetchError",
    "available_images",
    "cached_kernels",
    "choose_default",
    "default_cache_dir",
    "fetch_kernel",
)

# linux-image-<release> where release is e.g. 6.1.0-47-amd64 or 6.12.117+deb12-cloud-amd64
_IMAGE = re.compile(
    r"^linux-image-(?P<release>(?P<abi>6\.1\.0-(?P<n61>\d+)|6\.12\.(?P<n612>\d+)\+deb12)"
    r"-(?P<flavour>amd64|cloud-amd64))$")


class KernelFetchError(Exception):
    """A kernel package could not be listed, downloaded or unpacked."""


@dataclass(frozen=True, slots=True)
class CachedKernel:
    release: str
    package: str
    version: str
    flavour: str
    vmlinuz: str
    config: str | None

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


def _key(name: str) -> tuple[int, int, str]:
    m = _IMAGE.match(name)
    if m is None:
        return (0, 0, name)
    if m.group("n61") is not None:
        return (1, int(m.group("n61")), name)
    return (12, int(m.group("n612")), name)


def choose_default(names: list[str]) -> list[str]:
    """From available ``linux-image-*`` names, the default lab set (pure).

    The oldest and newest 6.1 ABIs (generic), the newest 6.12+deb12 generic, and its
    cloud flavour (or the newest cloud image of any series when that one is missing).
    """
    series: dict[tuple[int, str], list[str]] = {}
    for name in names:
        if (m := _IMAGE.match(name)) is not None:
            series.setdefault((_key(name)[0], m.group("flavour")), []).append(name)
    for group in series.values():
        group.sort(key=_key)
    g61 = series.get((1, "amd64"), [])
    g612 = series.get((12, "amd64"), [])
    cloud = sorted(series.get((1, "cloud-amd64"), []) + series.get((12, "cloud-amd64"), []), key=_key)
    chosen: list[str] = []
    if g61:
        chosen += [g61[0], g61[-1]]
    if g612:
        chosen.append(g612[-1])
    twin = g612[-1].replace("-amd64", "-cloud-amd64") if g612 else None
    if twin in cloud:
        chosen.append(twin)
    elif cloud:
        chosen.append(cloud[-1])
    return list(dict.fromkeys(n for n in chosen if n))


def available_images() -> list[str]:
    """Names of the linux-image packages apt can download (``apt-cache search``)."""
    try:
        proc = subprocess.run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1"],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise KernelFetchError("apt-cache not found: fetching kernels needs Debian's apt") from None
    if proc.returncode != 0:
        raise KernelFetchError(f"apt-cache search failed: {proc.stderr.strip()}")
    return [line.split(" - ", 1)[0].strip() for line in proc.stdout.splitlines() if line.strip()]


def _read_meta(d: Path) -> CachedKernel | None:
    try:
        meta = json.loads((d / "package.json").read_text())
        return CachedKernel(**meta)
    except (OSError, ValueError, TypeError):
        return None


def cached_kernels(cache: str | os.PathLike[str]) -> list[CachedKernel]:
    """The kernels unpacked in ``cache``, oldest series and ABI first."""
    root = Path(cache) / "kernels"
    if not root.is_dir():
        return []
    found = [k for d in root.iterdir() if d.is_dir() and (k := _read_meta(d)) is not None
             and Path(k.vmlinuz).is_file()]
    return sorted(found, key=lambda k: _key(k.package))


def _extract_boot(deb: Path, dest: Path) -> dict[str, Path]:
    """Unpack vmlinuz-*, config-* and System.map-* from the .deb's ./boot into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not member.isfile() or not name.startswith("boot/"):
                    continue
                base = name.split("/")[-1]
                kind = base.split("-", 1)[0]
                if kind not in ("vmlinuz", "config", "System.map"):
                    continue
                src = tar.extractfile(member)
                assert src is not None
                with open(dest / kind, "wb") as out:
                    shutil.copyfileobj(src, out)
                found[kind] = dest / kind
    if proc.returncode != 0:
        raise KernelFetchError(f"{deb.name}: dpkg-deb --fsys-tarfile failed")
    return found


def fetch_kernel(package: str, cache: str | os.PathLike[str]) -> CachedKernel:
    """Download ``package`` with apt-get and unpack its kernel into the cache (idempotent)."""
    m = _IMAGE.match(package.removesuffix("-unsigned"))
    if m is None:
        raise KernelFetchError(f"{package}: not a Debian 6.1/6.12 amd64 linux-image package name")
    release = m.group("release")
    target = Path(cache) / "kernels" / release
    if (existing := _read_meta(target)) is not None and Path(existing.vmlinuz).is_file():
        return existing
    Path(cache).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        os.chmod(tmp, 0o755)  # so that apt's _apt user may write there
        dl = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, capture_output=True,
                            text=True, check=False)
        debs = list(Path(tmp).glob("*.deb"))
        if dl.returncode != 0 or not debs:
            last = (dl.stderr.strip().splitlines() or ["no .deb"])[-1]
            raise KernelFetchError(f"apt-get download {package} failed: {last}")
        deb = debs[0]
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True,
                                text=True, check=True).stdout.strip()
        stage = Path(tmp) / "kernel"
        files = _extract_boot(deb, stage)
        if "vmlinuz" not in files:
            raise KernelFetchError(f"{deb.name}: no boot/vmlinuz-* inside")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), target)
    kernel = CachedKernel(release=release, package=package, version=fields,
                          flavour=m.group("flavour"), vmlinuz=str(target / "vmlinuz"),
                          config=str(target / "config") if "config" in files else None)
    (target / "package.json").write_text(json.dumps(kernel.as_dict(), indent=2) + "\n")
    return kernel
