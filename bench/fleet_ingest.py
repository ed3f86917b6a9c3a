"""A reboot wave at one fleet daemon: HOSTS simulated hosts, each with its own client
certificate from a private CA (tests/pki.py, the openssl command line), post
CAPTURES_PER_HOST real captures each (the lab boots of tests/fixtures/boots, packed the
way tests/capturegen.py packs them: every host its own machine id, every boot its own
boot id) to ``POST /api/v1/captures`` of one ``memledger daemon --fleet`` over mutual
TLS, all at once, each host over one keep-alive connection, from WORKERS client
processes. The daemon stores them in a real PostgreSQL.

Measured: captures a second from the first POST to the moment PostgreSQL holds the last
boot (its ``boots`` rows counted every POLL_S), the POST latency (p50, p99, from sending
the request to reading the answer, a reconnect included), the daemon's peak RSS (and its
parser child's), the CPU the daemon and PostgreSQL spent, and how many answers were busy
(503). A host whose kept-alive connection the daemon closed (it holds at most
MAX_CONNECTIONS) connects again and sends the same file again, as any HTTP client does:
a file is named by its digest, so a repeat is a ``duplicate`` answer, never a second
boot.

Oracle: PostgreSQL holds exactly the boots sent, each once, under the certificate that
sent it (``certificate:CN``, the machine id and boot id of its capture), and the daemon's
``memledger_received`` counts every file accepted.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import multiprocessing
import os
import re
import shutil
import ssl
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import psycopg

from bench.scrape import DaemonProc, cpu_seconds, rss_bytes

__all__ = ("CAPTURES_PER_HOST", "HOSTS", "WORKERS", "run")

HOSTS = 200
CAPTURES_PER_HOST = 5
WORKERS = 4          # client processes, HOSTS / WORKERS host threads each
POLL_S = 0.05
_TIMEOUT_S = 900.0   # the whole wave, before the benchmark gives up
_ATTEMPTS = 20       # a file's tries (reconnects and busy answers) before a host gives up
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class _Host:
    cn: str
    cert: str
    key: str
    files: tuple[str, ...]


def _make_pki(tests_module: Callable[[str], Any], where: Path) -> tuple[Any, list[str]]:
    """The CA, the fleet daemon's server certificate and HOSTS client certificates."""
    pki = tests_module("pki")
    if where.exists():
        shutil.rmtree(where)
    ca = pki.make_ca(where, "fleet-ca")
    ca.issue("fleet-server", dns=("localhost",), ips=("127.0.0.1",))
    names = [f"bench-host-{n:05d}" for n in range(HOSTS)]
    for cn in [*names, "prometheus"]:   # one at a time: openssl keeps the CA's serial file
        ca.issue(cn, client=True)
    return ca, names


def _make_captures(tests_module: Callable[[str], Any], where: Path,
                   names: list[str]) -> tuple[list[list[str]], dict[tuple[str, str, str], str]]:
    """Each host's capture files, and what the store must hold: (sender, machine id, boot
    id) → the lab boot it is."""
    gen = tests_module("capturegen")
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    boots = gen.BOOT_NAMES
    files: list[list[str]] = []
    expected: dict[tuple[str, str, str], str] = {}
    for n, cn in enumerate(names):
        mine = []
        for b in range(CAPTURES_PER_HOST):
            lab = boots[(n * CAPTURES_PER_HOST + b) % len(boots)]
            path = where / f"{cn}-{b}.tar.gz"
            path.write_bytes(gen.make_capture(lab, n, b, b, hostname=cn))
            mine.append(str(path))
            expected[(f"certificate:{cn}", gen.machine_id(n), gen.boot_id(n, b))] = lab
        files.append(mine)
    return files, expected


def _web_config(where: Path, ca: Any) -> Path:
    path = where / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {ca.dir / 'fleet-server.crt'}\n"
                    f"  key_file: {ca.dir / 'fleet-server.key'}\n"
                    "  client_auth_type: RequireAndVerifyClientCert\n"
                    f"  client_ca_file: {ca.cert}\n")
    return path


# -- the hosts (in the client processes) ------------------------------------------------

def _host(address: str, ca: str, h: _Host, start_at: float, out: list[dict[str, Any]]) -> None:
    """One host: its files one after the other over one keep-alive connection."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(h.cert, h.key)
    bodies = [Path(f).read_bytes() for f in h.files]
    host, port = address.rsplit(":", 1)
    conn: http.client.HTTPSConnection | None = None
    time.sleep(max(0.0, start_at - time.monotonic()))
    for path, body in zip(h.files, bodies, strict=True):
        sha = hashlib.sha256(body).hexdigest()
        rec: dict[str, Any] = {"file": path, "reconnects": 0, "busy": 0, "status": None}
        t0 = time.monotonic()
        rec["sent"] = t0
        for _ in range(_ATTEMPTS):
            fresh = conn is None
            if conn is None:
                conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=120)
            try:
                conn.request("POST", "/api/v1/captures", body,
                             {"Content-Type": "application/octet-stream",
                              "X-Memledger-Sha256": sha, "User-Agent": "memledger-bench"})
                resp = conn.getresponse()
                answer = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                # The daemon closed the kept-alive connection (at its connection cap) or
                # refused a new one: connect again and send it again.
                conn.close()
                conn = None
                rec["reconnects"] += 1
                rec["error"] = f"{type(exc).__name__}: {exc}"
                if fresh:
                    time.sleep(0.05)
                continue
            if resp.status == 503:
                rec["busy"] += 1
                time.sleep(min(float(resp.getheader("Retry-After") or 1), 1.0))
                continue
            rec["status"] = resp.status
            rec["answer"] = (json.loads(answer).get("status") if resp.status == 200
                             else answer.decode(errors="replace").strip())
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
            break
        rec["answered"] = time.monotonic()
        rec["latency_s"] = rec["answered"] - t0
        out.append(rec)
    if conn is not None:
        conn.close()


def _client(address: str, ca: str, hosts: list[_Host], start_at: float,
            results: Queue[list[dict[str, Any]]]) -> None:
    out: list[dict[str, Any]] = []
    threads = [threading.Thread(target=_host, args=(address, ca, h, start_at, out))
               for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(out)


# -- the measures ------------------------------------------------------------------------

def _direct_children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _descendants(pid: int) -> list[int]:
    out = []
    for child in _direct_children(pid):
        out += [child, *_descendants(child)]
    return out


def _postgres_cpu(pg: Any) -> float:
    """CPU seconds of the postmaster and its children now alive (utime + stime, and what
    their reaped children used)."""
    pidfile = pg.base / "data" / "postmaster.pid"
    root = int(pidfile.read_text().split()[0])
    total = 0.0
    for pid in [root, *_descendants(root)]:
        with contextlib.suppress(OSError):
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in f[11:15]) / _TICK
    return total


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM boots").fetchone()
    return int(row[0]) if row else 0


def _stored(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT h.sender, h.machine_id, b.boot_id FROM boots b JOIN hosts h "
            "ON h.id = b.host_id WHERE b.capture_id IS NOT NULL")]


def _received(address: str, ca: Any) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.load_cert_chain(ca.dir / "prometheus.crt", ca.dir / "prometheus.key")
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=60)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^memledger_received_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def _wave(work: Path, memledger: str, ca: Any, hosts: list[_Host],
          expected: dict[tuple[str, str, str], str], pg: Any) -> dict[str, Any]:
    """One wave against a fresh database of the running PostgreSQL server ``pg``."""
    total = len(expected)
    url = pg.new_database()
    pg_url = url.replace("postgresql+psycopg://", "postgresql://")
    spool = work / "fleet-ingest-spool"
    if spool.exists():
        shutil.rmtree(spool)
    d = DaemonProc(memledger, work / "daemon-fleet-ingest.log", "--db", url, "--spool",
                   str(spool), "--no-capture-self", "--fleet", "--web.config.file",
                   str(_web_config(work, ca)))
    try:
        end = time.monotonic() + 60   # the daemon migrates the new store first
        while not re.search(r"store \S+: in use", d.log_path.read_text()):
            if time.monotonic() > end:
                raise SystemExit("bench fleet-ingest: the fleet daemon's store never came up")
            time.sleep(0.05)
        mp = multiprocessing.get_context("fork")
        results: Queue[list[dict[str, Any]]] = mp.Queue()
        start_at = time.monotonic() + 3.0   # every client process ready, its files read
        daemon_cpu0, pg_cpu0 = cpu_seconds(d.pid), _postgres_cpu(pg)
        procs = [mp.Process(target=_client, args=(d.address, str(ca.cert), hosts[w::WORKERS],
                                                  start_at, results)) for w in range(WORKERS)]
        for p in procs:
            p.start()
        stored, last_change, seen = 0, time.monotonic(), 0
        # One connection for the polls: a connection each would fork a server process 20
        # times a second, CPU taken from what is measured.
        with psycopg.connect(pg_url, autocommit=True) as poll:
            while stored < total:
                time.sleep(POLL_S)
                stored = _count(poll)
                now = time.monotonic()
                if stored != seen:
                    seen, last_change = stored, now
                if now - last_change > 120 or now - start_at > _TIMEOUT_S:
                    raise SystemExit(f"bench fleet-ingest: {stored} of {total} boots stored, "
                                     f"no progress; see {d.log_path}")
        stored_at = time.monotonic()
        records = [r for _ in procs for r in results.get(timeout=600)]
        for p in procs:
            p.join(60)
        daemon_cpu = cpu_seconds(d.pid) - daemon_cpu0
        # The daemon's children are the forkserver (and its resource tracker); the parser
        # is a child of the forkserver.
        direct = set(_direct_children(d.pid))
        parser = [(rss_bytes(pid)["VmHWM"], cpu_seconds(pid))
                  for pid in _descendants(d.pid) if pid not in direct]
        postgres_cpu = _postgres_cpu(pg) - pg_cpu0
        peak = rss_bytes(d.pid)["VmHWM"]
        received = _received(d.address, ca)
    finally:
        d.stop()
    # The oracle.
    rows = _stored(pg_url)
    unanswered = [r for r in records if r["status"] != 200]
    if unanswered:
        raise SystemExit(f"bench fleet-ingest: {len(unanswered)} files not taken, e.g. "
                         f"{unanswered[0]}")
    if len(rows) != total or set(rows) != set(expected):
        raise SystemExit(f"bench fleet-ingest: {len(rows)} boots stored ({len(set(rows))} "
                         f"distinct, {len(set(rows) & set(expected))} of those sent) for "
                         f"{total} sent")
    if received.get("accepted") != total:
        raise SystemExit(f"bench fleet-ingest: the daemon accepted {received} for {total}")
    first = min(r["sent"] for r in records)
    answered = max(r["answered"] for r in records)
    lat = sorted(r["latency_s"] * 1000 for r in records)
    seconds = stored_at - first
    return {
        "seconds": seconds, "captures_per_s": total / seconds,
        "posting_seconds": answered - first, "accepted_per_s": total / (answered - first),
        "backlog_seconds": stored_at - answered,
        "post_p50_ms": _pct(lat, 50), "post_p99_ms": _pct(lat, 99), "post_max_ms": lat[-1],
        "busy_503": sum(r["busy"] for r in records),
        "reconnects": sum(r["reconnects"] for r in records),
        "answers": {k: sum(1 for r in records if r.get("answer") == k)
                    for k in ("accepted", "duplicate")},
        "received": received,
        "daemon_peak_rss_bytes": peak,
        "parser_peak_rss_bytes": max((v[0] for v in parser), default=None),
        "daemon_cpu_seconds": daemon_cpu,
        "parser_cpu_seconds": sum(v[1] for v in parser),
        "postgres_cpu_seconds": postgres_cpu,
        "load_1m_after": os.getloadavg()[0],
        "consistent": True,
    }


def run(work: Path, memledger: str, tests_module: Callable[[str], Any], repeat: int
        ) -> dict[str, Any]:
    """``repeat`` waves, each at a fresh fleet daemon over a fresh database of one
    PostgreSQL server; the best (the highest rate) and every run."""
    ca, names = _make_pki(tests_module, work / "fleet-pki")
    files, expected = _make_captures(tests_module, work / "fleet-captures", names)
    hosts = [_Host(cn, str(ca.dir / f"{cn}.crt"), str(ca.dir / f"{cn}.key"), tuple(fs))
             for cn, fs in zip(names, files, strict=True)]
    pg = tests_module("pgserver").PgServer()
    pg.start()
    try:
        runs = [_wave(work, memledger, ca, hosts, expected, pg) for _ in range(repeat)]
    finally:
        pg.stop()
    best = max(runs, key=lambda r: r["captures_per_s"])
    return {"hosts": HOSTS, "captures": len(expected), "client_processes": WORKERS,
            "bytes": sum(Path(f).stat().st_size for fs in files for f in fs),
            "target_captures_per_s": 150, **best, "runs": runs}
