"""The fleet, end to end on this machine: host daemons forward their boots over mutual TLS
to two fleet daemons sharing one PostgreSQL; every boot is stored exactly once, under the
host whose certificate sent it.

Real pieces only: daemons started as `memledger daemon`, certificates made with openssl
(tests/pki.py), a PostgreSQL server stopped and started again, SIGKILL. The oracle is the
central store's rows, read directly."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from capturegen import boot_id, machine_id, make_capture
from daemonrun import Daemon, drop, wait_for
from fleetclient import client_context, get, metric, post_capture
from memledger.store.db import make_engine, resolve_url
from memledger.store.queries import list_boots
from memledger.store.schema import boots, hosts
from pgserver import PgServer
from pki import CA, make_ca
from sqlalchemy import select

# Real servers and daemons (PostgreSQL, memledger as a subprocess).
pytestmark = pytest.mark.slow

KERNELS = ("6.1.0-47-amd64-default", "6.1.0-56-amd64-default")
SHARED = machine_id(0)  # the golden image's machine id, on hosts a and b
HOSTS = {"host-a": (1, SHARED), "host-b": (2, SHARED), "host-c": (3, machine_id(3))}


def _web_config(tmp: Path, ca: CA, name: str) -> Path:
    server = ca.issue(f"{name}-server", dns=("localhost",), ips=("127.0.0.1",))
    path = tmp / f"{name}-web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n"
                    f"  client_auth_type: RequireAndVerifyClientCert\n"
                    f"  client_ca_file: {ca.cert}\n")
    return path


def _forward_config(tmp: Path, ca: CA, host: str) -> Path:
    path = tmp / f"{host}-forward.yml"
    path.write_text(f"tls_config:\n  ca_file: {ca.cert}\n  cert_file: {ca.dir / host}.crt\n"
                    f"  key_file: {ca.dir / host}.key\n")
    path.chmod(0o600)
    return path


def _metric(d: Daemon, ctx: ssl.SSLContext | None, name: str) -> float:
    value = metric(d.address, ctx, name)
    if value is None:
        raise AssertionError(f"no sample {name}")
    return value


def _central(url: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(sender, boot id) → (machine id, kernel release) of every boot in the central store."""
    eng = make_engine(resolve_url(url))
    try:
        with eng.connect() as conn:
            return {(r.sender, r.boot_id): (r.machine_id, r.kernel_release) for r in conn.execute(
                select(hosts.c.sender, hosts.c.machine_id, boots.c.boot_id, boots.c.kernel_release)
                .join(hosts, hosts.c.id == boots.c.host_id))}
    finally:
        eng.dispose()


@pytest.fixture
def pki(tmp_path: Path) -> CA:
    ca = make_ca(tmp_path / "pki")
    for host in HOSTS:
        ca.issue(host, client=True)
    ca.issue("prometheus", client=True)
    return ca


def test_hosts_forward_to_two_fleet_daemons_through_outages(tmp_path: Path, pki: CA) -> None:
    server = PgServer()
    server.start()
    fleets: list[Daemon] = []
    senders: dict[str, Daemon] = {}
    try:
        url = server.new_database()
        for name in ("fleet1", "fleet2"):
            fleets.append(Daemon(tmp_path, url, tmp_path / f"{name}-spool", "--fleet",
                                 "--web.config.file", str(_web_config(tmp_path, pki, name))))
        scrape = client_context(pki, "prometheus")
        for d in fleets:
            wait_for("the fleet store", lambda d=d: _metric(d, scrape, "memledger_store_up") == 1)
        assert f"serving https://{fleets[0].address}/metrics" in get(fleets[0].address, scrape, "/")
        urls = [f"https://{d.address}" for d in fleets]
        for host in HOSTS:
            args = ["--forward.config.file", str(_forward_config(tmp_path, pki, host))]
            for u in urls:
                args += ["--forward.url", u]
            senders[host] = Daemon(tmp_path, f"sqlite:///{tmp_path / host}.db",
                                   tmp_path / f"{host}-spool", *args)
        expected: dict[tuple[str, str], tuple[str, str]] = {}

        def boot(host: str, b: int) -> None:
            n, mid = HOSTS[host]
            kernel = KERNELS[b % 2]
            drop(tmp_path / f"{host}-spool", f"{b}.capture",
                 make_capture(kernel, n, b, b, machine=mid, hostname=host))
            expected[(f"certificate:{host}", boot_id(n, b))] = (mid, kernel.rsplit("-", 1)[0])

        for b in range(2):
            for host in HOSTS:
                boot(host, b)
        wait_for("every boot stored centrally", lambda: _central(url) == expected, 120)

        # PostgreSQL away: the fleet daemons take files into their spools and say store_up 0.
        server.pause()
        for host in HOSTS:
            boot(host, 2)
        wait_for("store_up 0", lambda: _metric(fleets[0], scrape, "memledger_store_up") == 0)
        # One fleet daemon killed mid-stream, and started again while PostgreSQL is down.
        fleets[0].kill9()
        for host in HOSTS:
            boot(host, 3)
        fleets[0] = Daemon(tmp_path, url, tmp_path / "fleet1-spool", "--fleet",
                           "--web.config.file", str(tmp_path / "fleet1-web.yml"),
                           "--web.listen-address", fleets[0].address)
        assert fleets[0].proc.poll() is None
        server.resume()
        wait_for("every boot stored centrally, once", lambda: _central(url) == expected, 180)

        # Both fleet daemons away: the hosts' outboxes back up, and clear when one is back.
        a = senders["host-a"]
        addresses = [d.address for d in fleets]
        for d in fleets:
            assert d.stop() == 0
        boot("host-a", 4)
        wait_for("a backlog", lambda: _metric(a, None, "memledger_forward_backlog_files") == 1, 60)
        fleets = [Daemon(tmp_path, url, tmp_path / "fleet2-spool", "--fleet",
                         "--web.config.file", str(tmp_path / "fleet2-web.yml"),
                         "--web.listen-address", addresses[1])]
        a.signal(1)  # SIGHUP: forward now rather than after the backoff
        wait_for("the backlog cleared", lambda: _metric(a, None, "memledger_forward_backlog_files") == 0,
                 120)
        wait_for("the last boot stored", lambda: _central(url) == expected, 120)

        # A capture sent with host-c's certificate that claims host-a's machine and boot:
        # stored under host-c, host-a's boot untouched.
        forged = make_capture(KERNELS[1], 1, 0, 99, machine=SHARED, hostname="forged")
        status, answer = post_capture(fleets[0].address, client_context(pki, "host-c"), forged)
        assert (status, json.loads(answer)["status"]) == (200, "accepted")
        expected[("certificate:host-c", boot_id(1, 0))] = (SHARED, KERNELS[1].rsplit("-", 1)[0])
        wait_for("the forgery stored under its sender", lambda: _central(url) == expected, 60)

        # Strangers: no certificate, and a certificate of another CA.
        other = make_ca(tmp_path / "other", "other")
        other.issue("host-a", client=True)
        for ctx in (client_context(pki, None), client_context(other, "host-a")):
            ctx.load_verify_locations(pki.cert)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                post_capture(fleets[0].address, ctx, forged)

        # The clones are two hosts, both flagged.
        eng = make_engine(resolve_url(url))
        rows = list_boots(eng)
        eng.dispose()
        clones = {(r["sender"], r["shared_machine_id"]) for r in rows if r["machine_id"] == SHARED}
        assert clones == {("certificate:host-a", True), ("certificate:host-b", True),
                          ("certificate:host-c", True)}
        wait_for("the fleet metrics to say so", lambda: _metric(
            fleets[0], scrape, "memledger_fleet_shared_machine_id_hosts") == 3, 90)
    finally:
        for d in [*fleets, *senders.values()]:
            if d.proc.poll() is None:
                d.stop()
        server.stop()
