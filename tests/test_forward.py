"""Forwarding to fleet daemons: the outbox, the sender and the client configuration, against
a stand-in fleet daemon (stdlib http.server over real TLS that verifies client
certificates, made by tests/pki.py) that records what it received and answers as told."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from capturegen import make_capture
from conftest import MEMLEDGER
from daemonrun import Daemon, drop, wait_for
from memledger.exporters.forward import Forwarder
from memledger.exporters.httpclient import ClientConfigError, ClientSource
from memledger.spool.outbox import Outbox, UnsafeOutbox
from memledger.tracer.runtime import BatchHeader, RuntimeEvent, render_batch
from pki import CA, make_ca

pytestmark = pytest.mark.slow

BOOT = "6.12.117+deb12-amd64-memblock"


@dataclass(frozen=True)
class Received:
    sha256: str          # of the body as received
    header_sha: str      # X-Memledger-Sha256
    cn: str              # the client certificate's subject CN
    content_type: str
    at: float            # time.monotonic() when the request arrived
    answered: str        # what the stand-in answered


class Fleet:
    """A stand-in fleet daemon on 127.0.0.1:``port``: 200 accepted/duplicate unless
    ``script`` (answers used in turn: (status, headers, body) or "drop" or "hang") says
    otherwise."""

    def __init__(self, ca: CA, port: int = 0) -> None:
        server = ca.dir / "server.crt"
        if not server.exists():
            ca.issue("server", dns=("localhost",), ips=("127.0.0.1",))
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(server, ca.dir / "server.key")
        self.ctx.load_verify_locations(ca.cert)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.port = port or _free_port()
        self.received: list[Received] = []
        self.bodies: list[bytes] = []
        self.answered_at: list[tuple[float, int]] = []
        self.script: deque[tuple[int, dict[str, str], bytes] | str] = deque()
        self.stored: set[str] = set()
        self.release = threading.Event()
        self.httpd: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> Fleet:
        fleet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sha = hashlib.sha256(body).hexdigest()
                peer = self.connection.getpeercert()  # type: ignore[attr-defined]
                cn = dict(x[0] for x in peer["subject"])["commonName"]
                answer = fleet.script.popleft() if fleet.script else None
                if answer is None:
                    status = "duplicate" if sha in fleet.stored else "accepted"
                    fleet.stored.add(sha)
                    answer = (200, {"Content-Type": "application/json"},
                              json.dumps({"status": status, "sha256": sha}).encode())
                fleet.bodies.append(body)
                fleet.received.append(Received(sha, self.headers["X-Memledger-Sha256"], cn,
                                               self.headers["Content-Type"], time.monotonic(),
                                               str(answer[0]) if isinstance(answer, tuple) else answer))
                if answer == "drop":
                    self.close_connection = True
                    return
                if answer == "hang":
                    fleet.release.wait(30)
                    return
                assert isinstance(answer, tuple)
                code, headers, text = answer
                self.send_response(code)
                for k, v in {"Content-Length": str(len(text)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(text)
                self.wfile.flush()
                fleet.answered_at.append((time.monotonic(), code))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = self.ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def shas(self) -> list[str]:
        return [r.sha256 for r in self.received if r.answered == "200"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    ca = make_ca(tmp_path_factory.mktemp("pki"))
    ca.issue("server", dns=("localhost",), ips=("127.0.0.1",))
    ca.issue("host1", client=True)
    return ca


@pytest.fixture
def fleet(ca: CA) -> Iterator[Fleet]:
    f = Fleet(ca).start()
    yield f
    f.stop()


def client_config(tmp: Path, ca: CA, host: str = "host1", extra: str = "") -> Path:
    """A forward config file naming the CA and ``host``'s certificate (paths relative)."""
    d = tmp / f"conf-{host}"
    d.mkdir(exist_ok=True)
    for src, name in ((ca.cert, "ca.crt"), (ca.dir / f"{host}.crt", "host.crt"),
                      (ca.dir / f"{host}.key", "host.key")):
        (d / name).write_bytes(src.read_bytes())
        (d / name).chmod(0o600)
    path = d / "forward.yml"
    path.write_text("tls_config:\n  ca_file: ca.crt\n  cert_file: host.crt\n"
                    f"  key_file: host.key\n{extra}")
    path.chmod(0o600)
    return path


def captures(n: int, first_host: int = 1) -> list[bytes]:
    return [make_capture(BOOT, first_host + i, 1, i) for i in range(n)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def forwarder(tmp: Path, ca: CA, urls: list[str], max_bytes: int = 1 << 30,
              **kw: float) -> Forwarder:
    box = Outbox(str(tmp / "outbox"), max_bytes)
    box.open()
    return Forwarder(urls, box, ClientSource(str(client_config(tmp, ca))), **kw)


def metric(fwd: Forwarder, name: str, labels: dict[str, str] | None = None) -> float | None:
    for fam in fwd.collector.collect():
        for s in fam.samples:
            if s.name == name and s.labels == (labels or {}):
                return float(s.value)
    return None


# -- a real daemon ----------------------------------------------------------------------

def _daemon(tmp: Path, ca: CA, spool: Path, fleet_url: str, capture_self: bool = False) -> Daemon:
    return Daemon(tmp, f"sqlite:///{tmp / 'db.sqlite'}", spool, "--forward.url", fleet_url,
                  "--forward.config.file", str(client_config(tmp, ca)), capture_self=capture_self)


def test_the_daemon_forwards_its_own_boot(tmp_path: Path, ca: CA, fleet: Fleet) -> None:
    """The capture of this boot (--capture-self) is sent as the bytes stored."""
    d = _daemon(tmp_path, ca, tmp_path / "spool", fleet.url, capture_self=True)
    try:
        wait_for("the self capture", lambda: "this boot: new boot" in d.text(), 60)
        wait_for("it sent", lambda: len(fleet.received) == 1)
        (got,) = fleet.received
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert got.header_sha == got.sha256 and fleet.bodies[0][:2] == b"\x1f\x8b"
        assert _ids(fleet.bodies[0])[1] == boot
    finally:
        assert d.stop() == 0


def test_daemon_forwards_each_stored_file_once_over_mutual_tls(
        tmp_path: Path, ca: CA, fleet: Fleet) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    caps = captures(3)
    batch = render_batch(BatchHeader(*_ids(caps[0]), "bcc", "0.1.0", _now(), "host-1",  # type: ignore[arg-type]
                                     "6.12.117+deb12-amd64", 0),
                         [RuntimeEvent(1, 812.25, "freed", "crash_free_reserved_phys_range",
                                       0x70000000, 0x78000000, 128 << 20, "crash_shrink_memory")])
    bad = b"\x1f\x8b not really gzip"
    d = _daemon(tmp_path, ca, spool, fleet.url)
    try:
        for i, data in enumerate(caps):
            drop(spool, f"c{i}.tar.gz", data)
            wait_for("the capture stored", lambda i=i: (spool / "done" / f"c{i}.tar.gz").exists())  # type: ignore[misc]
        drop(spool, "b.jsonl", batch)
        drop(spool, "bad.tar.gz", bad)
        wait_for("the batch stored", lambda: (spool / "done" / "b.jsonl").exists())
        wait_for("the failure", lambda: (spool / "failed" / "bad.tar.gz").exists())
        wait_for("everything sent", lambda: d.metric("memledger_forward_backlog_files") == 0
                 and len(fleet.received) >= 4)
        expected = [sha(c) for c in caps] + [sha(batch)]
        assert fleet.shas() == expected  # each once, in the order stored; the failed one not
        assert {r.cn for r in fleet.received} == {"host1"}
        assert all(r.header_sha == r.sha256 for r in fleet.received)
        assert {r.content_type for r in fleet.received} == {"application/octet-stream"}
        assert d.metric('memledger_forward_sent_total{result="accepted"}') == 4
        assert d.metric("memledger_forward_oldest_age_seconds") == 0
        assert d.metric("memledger_forward_max_backlog_bytes") == 1 << 30
        assert d.metric("memledger_forward_last_success_timestamp_seconds") > 0
        assert os.listdir(tmp_path / "outbox") == ["refused"]
        assert d.text().count("fleet reachable") == 1
    finally:
        assert d.stop() == 0


def _ids(capture: bytes) -> tuple[str, str]:
    import io
    import tarfile
    with tarfile.open(fileobj=io.BytesIO(capture)) as tar:
        f = tar.extractfile("manifest.json")
        assert f is not None
        m = json.loads(f.read())
    return m["machine_id"], m["boot_id"]


def _now() -> object:
    from datetime import UTC, datetime
    return datetime.now(UTC)


def test_a_daemon_killed_with_files_queued_sends_them_after_restart(
        tmp_path: Path, ca: CA) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    fleet = Fleet(ca)  # not started: nothing listens on its port
    caps = captures(3, 10)
    d = _daemon(tmp_path, ca, spool, fleet.url)
    try:
        for i, data in enumerate(caps):
            drop(spool, f"c{i}.tar.gz", data)
            wait_for("the capture stored", lambda i=i: (spool / "done" / f"c{i}.tar.gz").exists())  # type: ignore[misc]
        wait_for("the backlog", lambda: d.metric("memledger_forward_backlog_files") == 3)
        wait_for("three failed attempts",
                 lambda: d.metric('memledger_forward_errors_total{reason="connect"}') >= 3)
        assert d.metric("memledger_forward_oldest_age_seconds") > 0
        assert d.metric("memledger_forward_backlog_bytes") == sum(len(c) for c in caps)
        assert d.text().count("fleet unreachable") == 1  # a state change, not each attempt
    finally:
        d.kill9()
    queued = sorted(p.name for p in (tmp_path / "outbox").iterdir() if p.is_file())
    assert [n.split("-", 1)[1] for n in queued] == [sha(c) for c in caps]
    fleet.start()
    try:
        d = _daemon(tmp_path, ca, spool, fleet.url)
        try:
            wait_for("the backlog sent", lambda: d.metric("memledger_forward_backlog_files") == 0)
            assert fleet.shas() == [sha(c) for c in caps]  # oldest first, none lost
        finally:
            assert d.stop() == 0
    finally:
        fleet.stop()


# -- the sender in process ----------------------------------------------------------------

def test_down_then_up_drains_oldest_first(tmp_path: Path, ca: CA) -> None:
    fleet = Fleet(ca)
    fwd = forwarder(tmp_path, ca, [fleet.url], backoff_cap_s=0.5)
    fwd.start()
    try:
        caps = captures(4, 20)
        for c in caps:
            fwd.offer(c)
        wait_for("failed attempts", lambda: (metric(fwd, "memledger_forward_errors_total",
                                                    {"reason": "connect"}) or 0) >= 2)
        assert metric(fwd, "memledger_forward_backlog_files") == 4
        assert metric(fwd, "memledger_forward_last_success_timestamp_seconds") is None  # unknown
        fleet.start()
        wait_for("drained", lambda: metric(fwd, "memledger_forward_backlog_files") == 0)
        assert fleet.shas() == [sha(c) for c in caps]
        assert metric(fwd, "memledger_forward_backlog_bytes") == 0
    finally:
        fwd.stop()
        fleet.stop()


def test_busy_with_retry_after_is_honoured(tmp_path: Path, ca: CA, fleet: Fleet) -> None:
    fleet.script.append((503, {"Retry-After": "3", "Content-Type": "text/plain"}, b"busy\n"))
    fwd = forwarder(tmp_path, ca, [fleet.url])
    fwd.start()
    try:
        (c,) = captures(1, 30)
        fwd.offer(c)
        wait_for("sent", lambda: fleet.shas() == [sha(c)])
        first, second = fleet.received
        assert first.answered == "503"
        (busy_at, code) = fleet.answered_at[0]
        assert code == 503
        # The backoff alone (full jitter up to 1 s) would have come back sooner.
        assert second.at - busy_at >= 3.0
        assert metric(fwd, "memledger_forward_errors_total", {"reason": "busy"}) == 1
    finally:
        fwd.stop()


def test_refused_goes_to_refused_with_its_reason_and_is_never_sent_again(
        tmp_path: Path, ca: CA, fleet: Fleet) -> None:
    fleet.script.append((400, {"Content-Type": "text/plain"}, b"not a capture: bad magic\n"))
    fwd = forwarder(tmp_path, ca, [fleet.url])
    fwd.start()
    try:
        a, b, c = captures(3, 40)
        fwd.offer(a)
        fwd.offer(b)
        wait_for("b sent", lambda: sha(b) in fleet.shas())
        refused = tmp_path / "outbox" / "refused"
        (name,) = [p.name for p in refused.iterdir() if not p.name.endswith(".error")]
        assert name.endswith(sha(a)) and (refused / name).read_bytes() == a
        error = (refused / f"{name}.error").read_text()
        assert error == f"refused by {fleet.url}: HTTP 400: not a capture: bad magic\n"
        fwd.offer(a)  # offered again (ingested again after a crash): not queued
        fwd.offer(c)
        # The fleet records a request before its answer reaches the forwarder, so wait for
        # the forwarder's own count of what was accepted, not for the fleet's receipt.
        wait_for("c sent", lambda: metric(fwd, "memledger_forward_sent_total",
                                          {"result": "accepted"}) == 2)
        assert fleet.shas() == [sha(b), sha(c)]
        assert [r.sha256 for r in fleet.received].count(sha(a)) == 1
        assert metric(fwd, "memledger_forward_sent_total", {"result": "refused"}) == 1
    finally:
        fwd.stop()


def test_failover_to_the_next_url(tmp_path: Path, ca: CA, fleet: Fleet) -> None:
    dead = f"https://127.0.0.1:{_free_port()}"
    fwd = forwarder(tmp_path, ca, [dead, fleet.url])
    fwd.start()
    try:
        caps = captures(3, 50)
        for c in caps:
            fwd.offer(c)
        wait_for("sent", lambda: fleet.shas() == [sha(c) for c in caps])
        # The dead one was tried once; the one that answers is kept.
        assert metric(fwd, "memledger_forward_errors_total", {"reason": "connect"}) == 1
    finally:
        fwd.stop()


def test_errors_are_retried_by_reason(tmp_path: Path, ca: CA, fleet: Fleet) -> None:
    fleet.script.extend([(500, {}, b"oops\n"), "drop",
                         (404, {"Content-Type": "text/plain"}, b"no such path\n")])
    fwd = forwarder(tmp_path, ca, [fleet.url], backoff_cap_s=0.2)
    fwd.start()
    try:
        (c,) = captures(1, 60)
        fwd.offer(c)
        wait_for("sent", lambda: fleet.shas() == [sha(c)])
        assert [r.answered for r in fleet.received] == ["500", "drop", "404", "200"]
        errors = {r: metric(fwd, "memledger_forward_errors_total", {"reason": r})
                  for r in ("http_5xx", "connect", "http_other", "busy", "tls", "timeout")}
        assert errors == {"http_5xx": 1, "connect": 1, "http_other": 1, "busy": 0, "tls": 0,
                          "timeout": 0}
    finally:
        fwd.stop()


def test_a_server_that_does_not_answer_times_out_and_stop_is_prompt(
        tmp_path: Path, ca: CA, fleet: Fleet) -> None:
    fleet.script.extend(["hang", "hang"])
    fwd = forwarder(tmp_path, ca, [fleet.url], request_timeout_s=1, backoff_cap_s=0.1)
    fwd.start()
    (c,) = captures(1, 70)
    fwd.offer(c)
    wait_for("a time-out", lambda: metric(fwd, "memledger_forward_errors_total",
                                          {"reason": "timeout"}) == 1)
    wait_for("the second request", lambda: len(fleet.received) == 2)
    fwd.stop(timeout=30)
    assert fwd._thread is not None and not fwd._thread.is_alive()
    assert metric(fwd, "memledger_forward_backlog_files") == 1  # still queued
    assert fleet.shas() == []


def test_a_server_with_a_certificate_of_another_ca_is_a_tls_error(
        tmp_path: Path, ca: CA) -> None:
    other = Fleet(make_ca(tmp_path / "other")).start()
    fwd = forwarder(tmp_path, ca, [other.url], backoff_cap_s=0.1)
    fwd.start()
    try:
        fwd.offer(captures(1, 80)[0])
        wait_for("a TLS error", lambda: (metric(fwd, "memledger_forward_errors_total",
                                                {"reason": "tls"}) or 0) >= 1)
        assert other.received == []
    finally:
        fwd.stop()
        other.stop()


def test_a_rotated_client_certificate_is_used_from_the_next_request(
        tmp_path: Path, ca: CA, fleet: Fleet) -> None:
    fwd = forwarder(tmp_path, ca, [fleet.url])
    fwd.start()
    try:
        a, b = captures(2, 90)
        fwd.offer(a)
        wait_for("a sent", lambda: len(fleet.shas()) == 1)
        new = ca.issue("host1-rotated", cn="host1-new", client=True)
        conf = tmp_path / "conf-host1"
        for src, name in ((new.cert, "host.crt"), (new.key, "host.key")):
            tmp = conf / f".{name}.new"
            tmp.write_bytes(src.read_bytes())
            tmp.chmod(0o600)
            tmp.rename(conf / name)
        fwd.offer(b)
        wait_for("b sent", lambda: len(fleet.shas()) == 2)
        assert [r.cn for r in fleet.received] == ["host1", "host1-new"]
    finally:
        fwd.stop()


def test_the_bound_drops_new_files_and_keeps_the_queued_ones(
        tmp_path: Path, ca: CA, caplog: pytest.LogCaptureFixture) -> None:
    caps = captures(5, 100)
    dead = f"https://127.0.0.1:{_free_port()}"
    fwd = forwarder(tmp_path, ca, [dead], max_bytes=len(caps[0]) + len(caps[1]))
    with caplog.at_level(logging.INFO, "memledger.forward"):
        for c in caps:
            fwd.offer(c)
    assert metric(fwd, "memledger_forward_dropped_total") == 3
    assert metric(fwd, "memledger_forward_backlog_files") == 2
    box = tmp_path / "outbox"
    kept = sorted(p for p in box.iterdir() if p.is_file())
    assert [p.read_bytes() for p in kept] == caps[:2]
    assert sum("the outbox is full" in r.getMessage() for r in caplog.records) == 1
    # Outbox opened again (a restart): the same bound, the same files.
    again = Outbox(str(box), len(caps[0]) + len(caps[1]))
    again.open()
    assert again.backlog()[:2] == (2, len(caps[0]) + len(caps[1]))
    assert again.add(caps[0]) == "present" and again.add(caps[4]) == "full"


def test_an_unsafe_outbox_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafeOutbox, match="a symlink"):
        Outbox(str(tmp_path / "link")).open()
    real.chmod(0o777)
    with pytest.raises(UnsafeOutbox, match="world-writable"):
        Outbox(str(real)).open()


# -- the configuration ------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "mode", "error"), [
    ("  ca_fil: ca.crt\n", 0o600, r"forward.yml: line 5: unknown key 'tls_config.ca_fil'"),
    ("basic_auth:\n  username: host1\n  password_file: pw\n", 0o600,
     r"forward.yml: line 7: basic_auth.password_file .*/pw: readable by others \(mode 0644\)"),
    ("", 0o644, r"forward.yml: readable by others \(mode 0644\)"),
    ("  server_name: [a]\n", 0o600, r"forward.yml: line 5: tls_config.server_name must be a string"),
])
def test_bad_config_exits_2_with_one_line(tmp_path: Path, ca: CA, extra: str, mode: int,
                                          error: str) -> None:
    path = client_config(tmp_path, ca, extra=extra)
    path.chmod(mode)
    (path.parent / "pw").write_text("secret\n")
    (path.parent / "pw").chmod(0o644)
    proc = _cli(tmp_path, "--forward.config.file", str(path))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("memledger: error: ")
    import re
    assert re.search(error, line), line


def test_a_missing_ca_file_exits_2_with_its_line(tmp_path: Path, ca: CA) -> None:
    path = client_config(tmp_path, ca)
    (path.parent / "ca.crt").unlink()
    proc = _cli(tmp_path, "--forward.config.file", str(path))
    assert proc.returncode == 2
    assert proc.stderr == (f"memledger: error: {path}: line 2: tls_config.ca_file "
                           f"{path.parent / 'ca.crt'}: No such file or directory\n")


@pytest.mark.parametrize(("args", "error"), [
    (("--forward.url", "ftp://fleet"), "the scheme must be https"),
    (("--forward.url", "https://u:p@fleet"), "credentials go in --forward.config.file"),
    (("--forward.url", "https://fleet", "--forward.max-backlog", "lots"), "not a size"),
    (("--forward.config.file", "/nonexistent"), "no --forward.url to use it for"),
])
def test_bad_forward_options_exit_2(tmp_path: Path, args: tuple[str, ...], error: str) -> None:
    proc = _cli(tmp_path, *args, url=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert error in proc.stderr


def _cli(tmp: Path, *args: str, url: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [MEMLEDGER, "daemon", "--db", f"sqlite:///{tmp / 'db.sqlite'}", "--spool",
           str(tmp / "spool"), "--no-capture-self", "--web.listen-address", "127.0.0.1:0",
           *(("--forward.url", "https://127.0.0.1:1") if url else ()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_client_source_keeps_the_last_good_settings(tmp_path: Path, ca: CA) -> None:
    path = client_config(tmp_path, ca)
    src = ClientSource(str(path))
    before = src.current()
    path.write_text("tls_config:\n  bogus: 1\n")
    assert src.current() is before  # a bad edit does not stop forwarding
    with pytest.raises(ClientConfigError, match=r"line 2: unknown key 'tls_config\.bogus'"):
        ClientSource(str(path))
