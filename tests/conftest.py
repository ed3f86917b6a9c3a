"""Shared helpers: the real captures under tests/fixtures, and running the real CLI."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURES = FIXTURES / "captures"
CAPTURE_NAMES = sorted(p.name for p in CAPTURES.iterdir() if p.is_dir())
MEMLEDGER = str(Path(sys.executable).with_name("memledger"))


AS_NOBODY = str(Path(__file__).with_name("as_nobody.py"))


def run_cli(*args: str, input: bytes | None = None, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed ``memledger`` script; ``unprivileged`` runs it as nobody (needs root)."""
    cmd = [sys.executable, AS_NOBODY, *args] if unprivileged else [MEMLEDGER, *args]
    return subprocess.run(cmd, input=input.decode() if input else None, capture_output=True,
                          text=True, timeout=120, check=False)


def qemu_missing(cache: Path) -> str | None:
    """Why QEMU with OVMF cannot run here (the e2e tests skip with it), or None."""
    import shutil

    from memledger.lab.firmware import FirmwareError, find_ovmf
    from memledger.lab.qemu import QEMU

    if shutil.which(QEMU) is None:
        return f"{QEMU} not installed (Debian package qemu-system-x86)"
    try:
        find_ovmf(cache)
    except FirmwareError:
        return "OVMF not installed (Debian package ovmf)"
    return None


def analyze_json(path: str | Path) -> Any:
    """``memledger analyze PATH --json``, run in this process by click's CliRunner: the
    same command and output as the installed script (test_cli runs that one), without a
    Python start-up per call."""
    from click.testing import CliRunner
    from memledger.cli.main import main

    try:
        result = CliRunner().invoke(main, ["analyze", str(path), "--json"], catch_exceptions=False)
    finally:
        gc.enable()  # analyze turns the cyclic collector off for its one-shot process
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def dmesg_text(name: str) -> str:
    return (CAPTURES / name / "root" / "dmesg.txt").read_text()


def kernel_efi_freed_bytes(text: str) -> int | None:
    """The kernel's own 'efi: Freeing EFI boot services memory: NK' figure, in bytes."""
    m = re.search(r"efi: Freeing EFI boot services memory: (\d+)K", text)
    return int(m.group(1)) * 1024 if m else None


@pytest.fixture(params=CAPTURE_NAMES)
def capture(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def pg_server() -> Any:
    """One real PostgreSQL server for the session (Debian's postgresql package)."""
    from pgserver import PgServer

    server = PgServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'memledger.db'}"
    server = request.getfixturevalue("pg_server")
    return str(server.new_database())
