"""Firmware for lab boots: OVMF (EFI) through pflash, or QEMU's default SeaBIOS.

OVMF comes from Debian's ``ovmf`` package: installed under /usr/share/OVMF, or fetched
with ``apt-get download`` and unpacked into the lab cache (no root needed).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ("FIRMWARES", "FirmwareError", "Ovmf", "fetch_ovmf", "find_ovmf")

FIRMWARES = ("ovmf", "seabios")
SYSTEM_OVMF = Path("/usr/share/OVMF")
# (CODE, VARS) pairs in order of preference: the 4 MiB build is Debian 12's default.
_PAIRS = (("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd"))


class FirmwareError(Exception):
    """No usable firmware."""


@dataclass(frozen=True, slots=True)
class Ovmf:
    code: Path  # attached read-only
    vars_template: Path  # copied per boot: the guest may write its variables


def _search_dirs(cache: Path | None) -> list[Path]:
    dirs = [SYSTEM_OVMF]
    if cache is not None:
        dirs.append(cache / "ovmf" / "usr" / "share" / "OVMF")
    return dirs


def find_ovmf(cache: str | os.PathLike[str] | None = None) -> Ovmf:
    """The installed OVMF, else the one unpacked in ``cache``."""
    cache_path = Path(cache) if cache is not None else None
    for d in _search_dirs(cache_path):
        for code, vars_ in _PAIRS:
            if (d / code).is_file() and (d / vars_).is_file():
                return Ovmf(d / code, d / vars_)
    raise FirmwareError("OVMF not found in /usr/share/OVMF (install Debian's ovmf, or run "
                        "`memledger lab kernels --fetch`, which unpacks it into the lab cache)")


def fetch_ovmf(cache: str | os.PathLike[str]) -> Ovmf:
    """Download Debian's ovmf package and unpack it into ``cache``/ovmf (if not there yet)."""
    dest = Path(cache) / "ovmf"
    try:
        return find_ovmf(cache)
    except FirmwareError:
        pass
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".ovmf-") as tmp:
        os.chmod(tmp, 0o755)  # so that apt's _apt user may write there
        dl = subprocess.run(["apt-get", "download", "-q", "ovmf"], cwd=tmp, capture_output=True,
                            text=True, check=False)
        debs = list(Path(tmp).glob("ovmf_*.deb"))
        if dl.returncode != 0 or not debs:
            raise FirmwareError(f"apt-get download ovmf failed: {dl.stderr.strip().splitlines()[-1:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest)], check=True)
    return find_ovmf(cache)
