"""Forwarding: every capture and event batch this daemon stored goes, through a durable
outbox (spool/outbox.py), to a fleet daemon's ``POST /api/v1/captures``.

:meth:`Forwarder.offer` queues the bytes on the caller's thread (the daemon's main loop,
after the store committed them and before the spool file moves to done/, so a crash in
between ingests it again as a duplicate and offers it again; the outbox keeps it once).
One sender thread sends the oldest file first, to the ``--forward.url`` daemons in turn:

- 200 (``{"status": "accepted"|"duplicate"}``): sent; the file is deleted.
- 400, 403, 409, 413, 422: refused for good; the file goes to refused/ with the answer.
- 503 and 429 (busy, with Retry-After), 408, other 5xx, a connection, TLS or time-out
  failure, and any other answer (a redirect, 401, 404: the address or the credentials are
  wrong, not the file): the file stays; the next URL is tried at once, and when every URL
  failed in a row the sender waits, exponentially longer with full jitter (1 s doubling to
  5 min) or as long as a Retry-After asked, if longer.

A connection gets ``connect_timeout_s`` to connect and finish TLS, and the whole request
``request_timeout_s``. :meth:`Forwarder.stop` wakes the thread and cuts a request in
flight; that file stays queued (sent again later: a duplicate at worst). The log says when
the fleet becomes reachable or unreachable, not each attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from memledger.exporters.httpclient import ClientSource
from memledger.spool.outbox import Outbox, Queued, UnsafeOutbox
from memledger.tracer.untrusted import printable
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ("API_PATH", "ERROR_REASONS", "SENT_RESULTS", "Forwarder", "Outcome", "check_url")

API_PATH = "/api/v1/captures"
SENT_RESULTS = ("accepted", "duplicate", "refused")
ERROR_REASONS = ("connect", "tls", "timeout", "http_5xx", "busy", "http_other")
REFUSED_STATUSES = frozenset((400, 403, 409, 413, 422))
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
_MAX_ANSWER = 64 << 10
_IDLE_S = 60.0

log = logging.getLogger("memledger.forward")


def check_url(url: str) -> str:
    """A fleet daemon's base URL (``https://fleet.example:9031``, a path prefix allowed),
    as given; ValueError saying what is wrong with it."""
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError as exc:
        raise ValueError(f"--forward.url {url!r}: {exc}") from None
    if u.scheme not in ("http", "https"):
        raise ValueError(f"--forward.url {url!r}: the scheme must be https (or http)")
    if not u.hostname:
        raise ValueError(f"--forward.url {url!r}: no host")
    if u.username is not None or u.password is not None:
        raise ValueError(f"--forward.url {url!r}: credentials go in --forward.config.file "
                         "(basic_auth), not in the URL")
    if u.query or u.fragment:
        raise ValueError(f"--forward.url {url!r}: a base URL has no query or fragment")
    del port
    return url


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: ``result`` (accepted, duplicate, refused) or ``error``
    (one of ERROR_REASONS), ``why`` in words, and a Retry-After in seconds."""

    result: str | None = None
    error: str | None = None
    why: str = ""
    retry_after_s: float | None = None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, min(float(int(value.strip())), BACKOFF_CAP_S * 4))
    return None  # an HTTP date is not used by the fleet daemon


def _first_line(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return printable(text.splitlines()[0] if text else "", 300)


class _Target:
    def __init__(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        self.url = url
        self.tls = u.scheme == "https"
        self.host = u.hostname or ""
        self.port = u.port or (443 if self.tls else 80)
        self.path = u.path.rstrip("/") + API_PATH


class Forwarder:
    """Sends what :meth:`offer` queues to ``urls``; :attr:`collector` has its metrics."""

    def __init__(self, urls: Sequence[str], outbox: Outbox, client: ClientSource, *,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 request_timeout_s: float = REQUEST_TIMEOUT_S,
                 backoff_base_s: float = BACKOFF_BASE_S,
                 backoff_cap_s: float = BACKOFF_CAP_S) -> None:
        if not urls:
            raise ValueError("no --forward.url")
        self.targets = [_Target(check_url(u)) for u in urls]
        self.outbox = outbox
        self.client = client
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._inflight: socket.socket | None = None
        self._current = 0
        self._failures = 0
        self._retry_at = 0.0
        self._round_retry = 0.0
        self._reachable: bool | None = None
        self._full = False
        self.sent = dict.fromkeys(SENT_RESULTS, 0)
        self.errors = dict.fromkeys(ERROR_REASONS, 0)
        self.dropped = 0
        self.last_success: float | None = None
        self.collector = _Collector(self)

    # -- the daemon's side --------------------------------------------------------------

    def offer(self, data: bytes) -> None:
        """Queue ``data`` to be sent (never raises: a file that cannot be queued is
        counted as dropped and logged)."""
        try:
            status = self.outbox.add(data)
        except OSError as exc:
            why = str(exc) if isinstance(exc, UnsafeOutbox) else \
                f"{self.outbox.path}: cannot queue a file to forward: {exc.strerror or exc}"
            with self._lock:
                self.dropped += 1
            log.error("%s; it is not forwarded", why)
            return
        if status == "full":
            with self._lock:
                self.dropped += 1
                first = not self._full
                self._full = True
            if first:
                files, size, _ = self.outbox.backlog()
                log.error("%s: the outbox is full (%d file(s), %d of %d bytes): new files are "
                          "not forwarded until it drains (they stay in the spool's done/ "
                          "for its retention time)", self.outbox.path, files, size,
                          self.outbox.max_bytes)
            return
        if status == "queued":
            with self._lock:
                was_full, self._full = self._full, False
            if was_full:
                log.warning("%s: the outbox has room again; %d file(s) dropped so far",
                            self.outbox.path, self.dropped)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="memledger-forward", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Try again now (SIGHUP): the backoff starts over."""
        with self._lock:
            self._retry_at = 0.0
            self._failures = 0
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Wake the sender and cut a request in flight; the file in it stays queued."""
        with self._lock:
            self._stopping = True
            sock = self._inflight
        self._wake.set()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the sender -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._step()
            except Exception:  # the last word: the sender never dies
                log.exception("forwarding: internal error; retrying in %.0fs", _IDLE_S)
                self._wake.wait(_IDLE_S)
                self._wake.clear()

    def _step(self) -> None:
        q = self.outbox.oldest()
        wait = _IDLE_S if q is None else self._retry_at - time.monotonic()
        if wait > 0:
            self._wake.wait(wait)
            self._wake.clear()
            return
        assert q is not None
        try:
            data = self.outbox.read(q)
        except FileNotFoundError:
            self.outbox.drop(q)
            return
        except OSError as exc:
            log.error("%s/%s: cannot read it (%s); retrying in %.0fs", self.outbox.path, q.name,
                      exc.strerror or exc, _IDLE_S)
            self._retry_at = time.monotonic() + _IDLE_S
            return
        if hashlib.sha256(data).hexdigest() != q.sha256:
            self._refuse(q, "its bytes do not match the digest in its name (changed on disk)")
            return
        target = self.targets[self._current]
        outcome = self._attempt(target, data, q.sha256)
        if self._stopping and outcome.error is not None:
            return  # cut by stop(): not a failure of the fleet
        if outcome.result is not None:
            self._succeeded(target, q, outcome)
        else:
            self._failed(target, outcome)

    def _refuse(self, q: Queued, why: str) -> None:
        try:
            where = self.outbox.refuse(q, why)
        except OSError as exc:
            log.error("%s/%s: %s; cannot move it to refused/: %s; retrying in %.0fs",
                      self.outbox.path, q.name, why, exc, _IDLE_S)
            self._retry_at = time.monotonic() + _IDLE_S
            return
        log.warning("%s: %s (moved to %s)", q.name, why, where)

    def _succeeded(self, target: _Target, q: Queued, outcome: Outcome) -> None:
        assert outcome.result is not None
        if outcome.result == "refused":
            self._refuse(q, f"refused by {target.url}: {outcome.why}")
        else:
            try:
                self.outbox.remove(q)
            except OSError as exc:
                log.error("%s/%s: sent, but cannot delete it: %s", self.outbox.path, q.name, exc)
        with self._lock:
            self.sent[outcome.result] += 1
            self.last_success = time.time()
            self._failures = 0
            self._retry_at = 0.0
            changed = self._reachable is not True
            self._reachable = True
        if changed:
            files, _, _ = self.outbox.backlog()
            log.info("fleet reachable: %s answers; %d file(s) left to send", target.url, files)

    def _failed(self, target: _Target, outcome: Outcome) -> None:
        assert outcome.error is not None
        with self._lock:
            self.errors[outcome.error] += 1
            self._failures += 1
            self._current = (self._current + 1) % len(self.targets)
            self._round_retry = max(self._round_retry, outcome.retry_after_s or 0.0)
            if self._failures % len(self.targets):
                return  # the next URL, at once
            rounds = self._failures // len(self.targets)
            delay = random.uniform(0, min(self.backoff_cap_s,
                                          self.backoff_base_s * 2 ** (rounds - 1)))
            delay = max(delay, self._round_retry)
            self._round_retry = 0.0
            self._retry_at = time.monotonic() + delay
            changed = self._reachable is not False
            self._reachable = False
        if changed:
            files, _, _ = self.outbox.backlog()
            log.warning("fleet unreachable: %s: %s; %d file(s) queued, retrying with backoff",
                        target.url, outcome.why, files)
        else:
            log.debug("%s: %s; next try in %.1fs", target.url, outcome.why, delay)

    # -- one request ----------------------------------------------------------------------

    def _attempt(self, target: _Target, data: bytes, sha: str) -> Outcome:
        settings = self.client.current()
        deadline = time.monotonic() + self.request_timeout_s
        sock: socket.socket | None = None
        timer: threading.Timer | None = None
        try:
            try:
                sock = socket.create_connection((target.host, target.port),
                                                timeout=self.connect_timeout_s)
            except TimeoutError:
                return Outcome(error="timeout", why="connect timed out")
            except OSError as exc:
                return Outcome(error="connect", why=f"cannot connect: {exc.strerror or exc}")
            with self._lock:
                if self._stopping:
                    return Outcome(error="connect", why="stopping")
                self._inflight = sock
            # The whole request's deadline: the socket is shut down when it passes.
            timer = threading.Timer(max(0.0, deadline - time.monotonic()), _shutdown, (sock,))
            timer.daemon = True
            timer.start()
            if target.tls:
                try:
                    sock = settings.context.wrap_socket(
                        sock, server_hostname=settings.server_name or target.host)
                except ssl.SSLError as exc:
                    return Outcome(error="tls", why=f"TLS: {exc.reason or exc}")
                except TimeoutError:
                    return Outcome(error="timeout", why="the TLS handshake timed out")
                with self._lock:
                    self._inflight = sock
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            conn = http.client.HTTPConnection(target.host, target.port)
            conn.sock = sock
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Length": str(len(data)), "X-Memledger-Sha256": sha,
                       "User-Agent": "memledger-forward"}
            if settings.authorization is not None:
                headers["Authorization"] = settings.authorization
            conn.request("POST", target.path, body=data, headers=headers)
            resp = conn.getresponse()
            body = resp.read(_MAX_ANSWER)
            return _judge(resp.status, resp.getheader("Retry-After"), body)
        except TimeoutError:
            return Outcome(error="timeout", why="no answer in time")
        except ssl.SSLError as exc:
            return Outcome(error="tls", why=f"TLS: {exc.reason or exc}")
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline:
                return Outcome(error="timeout", why=f"no answer in {self.request_timeout_s:.0f}s")
            what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return Outcome(error="connect", why=f"connection lost: {what}")
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._inflight = None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _judge(status: int, retry_after: str | None, body: bytes) -> Outcome:
    """The fleet daemon's answer, by its contract."""
    if status == 200:
        try:
            said = json.loads(body).get("status")
        except (ValueError, AttributeError):
            said = None
        return Outcome(result="duplicate" if said == "duplicate" else "accepted")
    line = _first_line(body)
    why = f"HTTP {status}" + (f": {line}" if line else "")
    if status in REFUSED_STATUSES:
        return Outcome(result="refused", why=why)
    if status in (503, 429):
        return Outcome(error="busy", why=why, retry_after_s=_retry_after(retry_after))
    if status == 408:
        return Outcome(error="timeout", why=why)
    if 500 <= status < 600:
        return Outcome(error="http_5xx", why=why, retry_after_s=_retry_after(retry_after))
    return Outcome(error="http_other", why=why)


class _Collector(Collector):
    """The forwarder's metrics, read at scrape time."""

    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd

    def collect(self) -> Iterator[Metric]:
        fwd = self.fwd
        files, size, oldest = fwd.outbox.backlog()
        yield GaugeMetricFamily("memledger_forward_backlog_files",
                                "Files waiting in the outbox to be forwarded.", value=files)
        yield GaugeMetricFamily("memledger_forward_backlog_bytes",
                                "Bytes of the files waiting in the outbox.", value=size)
        yield GaugeMetricFamily("memledger_forward_max_backlog_bytes",
                                "The outbox's bound (--forward.max-backlog).",
                                value=fwd.outbox.max_bytes)
        yield GaugeMetricFamily("memledger_forward_oldest_age_seconds",
                                "How long the oldest file in the outbox has waited; 0 when "
                                "none waits.",
                                value=max(0.0, time.time() - oldest) if oldest is not None else 0.0)
        with fwd._lock:
            sent, errors, dropped, last = dict(fwd.sent), dict(fwd.errors), fwd.dropped, \
                fwd.last_success
        m = CounterMetricFamily("memledger_forward_sent", "Files a fleet daemon answered, by "
                                "result (accepted, duplicate: it has them; refused: for good, "
                                "moved to the outbox's refused/).", labels=["result"])
        for result in SENT_RESULTS:
            m.add_metric([result], sent[result])
        yield m
        e = CounterMetricFamily("memledger_forward_errors", "Failed attempts to send a file "
                                "(retried), by reason.", labels=["reason"])
        for reason in ERROR_REASONS:
            e.add_metric([reason], errors[reason])
        yield e
        yield CounterMetricFamily("memledger_forward_dropped", "Files not queued to forward "
                                  "because the outbox was full (or could not be written).",
                                  value=dropped)
        if last is not None:
            yield GaugeMetricFamily("memledger_forward_last_success_timestamp_seconds",
                                    "When a fleet daemon last answered a file (Unix time).",
                                    value=last)
