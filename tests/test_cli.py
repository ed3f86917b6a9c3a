"""The command line: exit codes, one-line errors, several boots, stdin, live roots."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import CAPTURES, run_cli

# Runs the installed `memledger` script (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

G = CAPTURES / "g-6.12.117-default"
K = CAPTURES / "k-6.1.0-47-default"


def _one_line_error(proc: object, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout  # type: ignore[attr-defined]
    err = proc.stderr.strip()  # type: ignore[attr-defined]
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("memledger: error: ")
    for f in fragments:
        assert f in err, err


def test_missing_path(tmp_path: Path) -> None:
    _one_line_error(run_cli("analyze", str(tmp_path / "nope")), "nope", "No such file")


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.log"
    f.write_text("")
    _one_line_error(run_cli("analyze", str(f)), str(f), "empty")


def test_binary_file(tmp_path: Path) -> None:
    f = tmp_path / "garbage.bin"
    f.write_bytes(bytes(range(256)) * 64)
    _one_line_error(run_cli("analyze", str(f)), str(f), "binary")


def test_text_that_is_not_a_kernel_log(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("shopping list\nmilk\neggs\n")
    _one_line_error(run_cli("analyze", str(f)), f"{f}:1:", "no kernel messages")


def test_empty_directory(tmp_path: Path) -> None:
    _one_line_error(run_cli("analyze", str(tmp_path)), str(tmp_path), "no kernel log")


def test_unreadable_file(tmp_path: Path) -> None:
    # pytest's tmp_path lies under a root-only directory: not even stat() works for nobody.
    f = tmp_path / "secret.log"
    shutil.copy(G / "root" / "dmesg.txt", f)
    _one_line_error(run_cli("analyze", str(f), unprivileged=True), str(f), "Permission denied")


def test_unreadable_file_in_a_searchable_directory() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o755)
        f = Path(d) / "secret.log"
        shutil.copy(G / "root" / "dmesg.txt", f)
        f.chmod(0o600)
        _one_line_error(run_cli("analyze", str(f), unprivileged=True), str(f), "Permission denied")


def test_table_output_names_the_figures() -> None:
    proc = run_cli("analyze", str(G / "root"))
    assert proc.returncode == 0, proc.stderr
    assert "EFI boot services" in proc.stdout
    assert "46,912 KiB" in proc.stdout  # efi: Freeing EFI boot services memory: 46912K


def test_two_boots_in_one_file_give_a_list(tmp_path: Path) -> None:
    f = tmp_path / "two-boots.log"
    f.write_text((K / "root" / "dmesg.txt").read_text() + (G / "root" / "dmesg.txt").read_text())
    proc = run_cli("analyze", str(f), "--json")
    assert proc.returncode == 0, proc.stderr
    boots = json.loads(proc.stdout)
    assert [b["kernel"]["release"] for b in boots] == ["6.1.0-47-amd64", "6.12.117+deb12-amd64"]
    assert [b["efi_boot_services"]["reclaimed_bytes"] for b in boots] == [43152 * 1024, 46912 * 1024]
    assert [b["boot"]["index"] for b in boots] == [0, 1]


def test_stdin() -> None:
    data = (G / "root" / "dmesg.txt").read_bytes()
    proc = run_cli("analyze", "-", "--json", input=data)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["efi_boot_services"]["reclaimed_bytes"] == 46912 * 1024


def test_trace_file_alone() -> None:
    trace = CAPTURES / "n-6.12.117-labbootconfig-bootconfig-memblock" / "root/sys/kernel/tracing/trace"
    proc = run_cli("analyze", str(trace), "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    # The kretprobe pages from efi_free_boot_services; the kernel printed 45648K that boot.
    assert d["efi_boot_services"]["cross_checks"]["trace_freed_bytes"] == 45648 * 1024
    assert d["fidelity"]["sources"]["kernel_log"] is False


def test_live_root_as_root() -> None:
    proc = run_cli("analyze", "/", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["kernel"]["release"] == os.uname().release
    assert d["fidelity"]["sources"]["kernel_log"] is True
    assert d["kernel_accounting"]["memtotal_bytes"] > 0


def test_live_root_as_unprivileged_user() -> None:
    # Files only root may read (/dev/kmsg when dmesg_restrict=1, runtime-map, debugfs)
    # lower the fidelity; they are never an error.
    proc = run_cli("analyze", "/", "--json", unprivileged=True)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    d = json.loads(proc.stdout)
    assert d["kernel"]["release"] == os.uname().release
    restricted = Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() == "1"
    if restricted:
        assert "dev/kmsg" in d["fidelity"]["unreadable"]
        assert d["fidelity"]["sources"]["kernel_log"] is False
