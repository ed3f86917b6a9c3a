"""Poison files: one small file must not stop the daemon, at once or at every restart (issue 18).

Each file below crashed the daemon at 5cfcfbc (systemd restarted it, it took the same
file and died again, and the spool stayed blocked) or was stored where it should have been
refused. Now each ends in failed/ with one line saying why, is counted as failed, and the
good capture dropped after it is stored by the same daemon process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from capturegen import BOOTS, T0, boot_id, machine_id, make_capture, targz
from daemonrun import Daemon, drop, wait_for
from memledger.tracer.runtime import FORMAT, FORMAT_VERSION

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

DMESG = (BOOTS / "6.1.0-47-amd64-default" / "root" / "dmesg.txt").read_bytes()
GOOD = make_capture("6.12.117+deb12-amd64-default", 7, 7)


def _manifest(**changes: object) -> dict[str, object]:
    m: dict[str, object] = {"format": "memledger-capture", "format_version": 1,
                            "memledger_version": "test", "machine_id": machine_id(3),
                            "boot_id": boot_id(3, 1), "hostname": "web-3",
                            "captured_at": T0.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    m.update(changes)
    return m


def _capture(manifest: dict[str, object] | bytes, *extra: tuple[str, bytes]) -> bytes:
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    return targz({"manifest.json": raw, "dmesg.txt": DMESG, **dict(extra)})


def _batch_header(**changes: object) -> dict[str, object]:
    h: dict[str, object] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                            "machine_id": machine_id(3), "boot_id": boot_id(3, 1),
                            "hostname": "web-3", "source": "kmsg", "memledger_version": "test",
                            "written_at": "2026-11-01T00:00:00.000000Z", "dropped": 0}
    h.update(changes)
    return h


def _batch(header: dict[str, object] | bytes) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return head + b"\n" + json.dumps({"seq": 1, "kind": "log", "function": "kmsg",
                                      "bytes": 4096}).encode() + b"\n"


def _deep_batch() -> bytes:
    head = json.dumps(_batch_header())[:-1].encode()  # without its closing brace
    return _batch(head + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


# name -> (the file, a phrase its failed/NAME.error must hold)
POISON: dict[str, tuple[Callable[[], bytes], str]] = {
    "a batch header nesting 100 000 arrays": (_deep_batch, "nests deeper than 8 levels"),
    "a manifest host name with a lone surrogate": (
        lambda: _capture(_manifest(hostname="web\ud800")), "hostname holds the character \\ud800"),
    "a batch host name with a lone surrogate": (
        lambda: _batch(_batch_header(hostname="web\ud800")), "hostname holds the character \\ud800"),
    "a batch written at 0001-01-01T00:00:00+23:59": (
        lambda: _batch(_batch_header(written_at="0001-01-01T00:00:00+23:59")),
        "written_at '0001-01-01T00:00:00+23:59' is out of range in UTC"),
    "a capture taken at 0001-01-01T00:00:00+23:59": (
        lambda: _capture(_manifest(captured_at="0001-01-01T00:00:00+23:59")),
        "captured_at '0001-01-01T00:00:00+23:59' is out of range in UTC"),
    "a manifest host name with a NUL": (
        lambda: _capture(_manifest(hostname="web\x00")), "hostname holds the character \\x00"),
    "a manifest host name with a newline": (
        lambda: _capture(_manifest(hostname="web\nERROR forged")),
        "hostname holds the character \\n"),
    "a 20 000-character kernel release": (
        lambda: _capture(_manifest(kernel_release="6" * 20_000)),
        "kernel_release is 20000 characters, over the 64 a kernel can produce"),
    "manifest.json twice": (
        lambda: targz({"manifest.json": json.dumps(_manifest()).encode(), "dmesg.txt": DMESG,
                       "./manifest.json": json.dumps(_manifest(hostname="other")).encode()}),
        "member 'manifest.json' appears twice"),
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_a_poison_file_is_refused_and_the_daemon_goes_on(case: str, db_url: str,
                                                        tmp_path: Path) -> None:
    make, why = POISON[case]
    spool = tmp_path / "spool"
    d = Daemon(tmp_path, db_url, spool)
    drop(spool, "poison.tar.gz", make())
    drop(spool, "good.tar.gz", GOOD)
    wait_for("the good capture", lambda: (spool / "done" / "good.tar.gz").exists(), 60)
    reason = (spool / "failed" / "poison.tar.gz.error").read_text()
    assert why in reason and reason.count("\n") == 1, reason
    assert d.metric('memledger_ingest_total{result="failed"}') == 1
    assert d.metric('memledger_ingest_total{result="ok"}') == 1
    assert d.proc.poll() is None  # the same process: no restart
    assert d.stop() == 0
    assert "Traceback" not in d.text()
    assert not any(line.startswith("ERROR forged") for line in d.text().splitlines())
