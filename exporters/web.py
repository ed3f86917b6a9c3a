"""The daemon's HTTP side: ``--web.telemetry-path`` (default /metrics) and a landing page.

A ThreadingHTTPServer serves each request on its own thread, so one slow client does not
hold up the others; metrics come from the registry's collectors at scrape time. Clients
cannot take the daemon's file descriptors:

- at most :func:`connection_cap` connections are open at once, well below the descriptor
  limit, so the spool, the database and the parser always have descriptors left
  (FD_RESERVE);
- a client has HEADER_DEADLINE_S to send a whole request's headers (a client that sends
  a header line every few seconds never trips a per-read timeout, so that alone is not
  enough), and CLIENT_TIMEOUT_S of silence at any time;
- at the cap, a new connection pushes out the one that has waited longest for its
  headers (a scrape sends its request at once, so stalled clients go first); when every
  connection is being answered, the new one is closed;
- an accept() that fails for want of descriptors is retried after a pause, not in a spin.
"""

from __future__ import annotations

import contextlib
import errno
import html
import logging
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ("CLIENT_TIMEOUT_S", "FD_RESERVE", "HEADER_DEADLINE_S", "MAX_CONNECTIONS", "WebServer",
           "connection_cap", "parse_listen_address")

log = logging.getLogger(__name__)


def parse_listen_address(text: str) -> tuple[str, int]:
    """``:9031``, ``127.0.0.1:9031``, ``[::1]:9031``, ``localhost:0`` → (host, port).

    Raises ValueError with a one-line reason.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--web.listen-address {text!r}: expected [HOST]:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


CLIENT_TIMEOUT_S = 10.0
HEADER_DEADLINE_S = 10.0
# Prometheus scrapes over one or two keep-alive connections per server; a few people may
# look at the landing page at once.
MAX_CONNECTIONS = 64
# Descriptors the rest of the daemon may need at once: the spool's four directories and
# a file, the database's connections and SQLite's -wal and -shm files, the parser's pipes,
# inotify, logging and the forkserver's sockets; measured about 30, kept twice that.
FD_RESERVE = 64
_ACCEPT_PAUSE_S = 0.1


def connection_cap() -> int:
    """How many HTTP connections may be open at once: MAX_CONNECTIONS, or fewer when the
    descriptor limit (RLIMIT_NOFILE) leaves less than FD_RESERVE for the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FD_RESERVE))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        super().server_activate()
        self._open: dict[socket.socket, float | None] = {}  # -> waiting for headers since
        self._open_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning("HTTP: cannot accept a connection (%s); pausing",
                            exc.strerror or exc)
                time.sleep(_ACCEPT_PAUSE_S)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            if len(self._open) >= self.max_connections:
                waiting = [(since, s) for s, since in self._open.items() if since is not None]
                if not waiting:
                    self.close_request(request)
                    return
                _, oldest = min(waiting, key=lambda w: w[0])
                _shut(oldest)
                self._open.pop(oldest, None)
            self._open[request] = time.monotonic()
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def waiting_for_headers(self, request: socket.socket, waiting: bool) -> None:
        with self._open_lock:
            if request in self._open:
                self._open[request] = time.monotonic() if waiting else None

    def service_actions(self) -> None:
        """Runs in serve_forever's loop (every 0.5 s): drop clients past the header deadline."""
        now = time.monotonic()
        with self._open_lock:
            late = [s for s, since in self._open.items()
                    if since is not None and now - since > HEADER_DEADLINE_S]
            for s in late:
                _shut(s)
                self._open[s] = None  # shut once; its thread closes it

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls is its own business (socketserver would print a
        traceback to stderr, the journal); anything else is one log line."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("HTTP client %s: %s", client_address, exc)
        else:
            log.error("HTTP request from %s failed: %s: %s", client_address,
                      type(exc).__name__, exc)
    allow_reuse_address = True


def _server_class(host: str) -> type[_Server]:
    if ":" in host:
        return type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    return _Server


class WebServer:
    """Binds at construction (so READY=1 can follow), serves on a thread after start()."""

    def __init__(self, listen: str, telemetry_path: str, registry: CollectorRegistry,
                 landing: Callable[[], dict[str, str]],
                 rendered: Callable[[], bytes] | None = None) -> None:
        host, port = parse_listen_address(listen)
        path = telemetry_path if telemetry_path.startswith("/") else "/" + telemetry_path

        class Handler(BaseHTTPRequestHandler):
            server_version = "memledger"
            protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes
            # A client that sends nothing (or reads nothing) for this long is dropped, so
            # stalled connections cannot pile up threads (slowloris).
            timeout = CLIENT_TIMEOUT_S

            def log_message(self, format: str, *args: Any) -> None:
                pass  # access logs would flood the journal at every scrape

            def handle_one_request(self) -> None:
                self.server.waiting_for_headers(self.connection, True)  # type: ignore[attr-defined]
                super().handle_one_request()

            def parse_request(self) -> bool:
                ok = super().parse_request()  # reads the request line's headers
                self.server.waiting_for_headers(self.connection, False)  # type: ignore[attr-defined]
                return ok

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                route = self.path.split("?", 1)[0]
                if route == path:
                    try:
                        body = server._metrics()
                    except Exception as exc:  # a failing collector is a 500, not a dead thread
                        self._send(500, "text/plain; charset=utf-8", f"{exc}\n".encode())
                        return
                    self._send(200, CONTENT_TYPE_LATEST, body)
                elif route == "/":
                    self._send(200, "text/html; charset=utf-8", _landing(path, landing()))
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")

            do_HEAD = do_GET

        server = self
        self._registry, self._rendered = registry, rendered
        self._render_lock = threading.Lock()
        self._last: tuple[float, bytes] | None = None  # (when its rendering started, body)
        self.path = path
        self.httpd = _server_class(host)((host, port), Handler)
        self.httpd.max_connections = connection_cap()
        self._thread: threading.Thread | None = None

    def _metrics(self) -> bytes:
        """The /metrics body. Scrapes that arrive while one is being rendered share the
        next rendering (single flight): a response always reflects a rendering that began
        after its request arrived, so nothing is stale, and a burst of scrapes costs a
        few renderings instead of one each (tests/reliability/test_http.py)."""
        asked = time.monotonic()
        with self._render_lock:
            if self._last is not None and self._last[0] >= asked:
                return self._last[1]
            started = time.monotonic()
            # Families rendered ahead of time (fleet mode) follow the live ones.
            body = generate_latest(self._registry) + (self._rendered() if self._rendered else b"")
            self._last = (started, body)
            return body

    @property
    def address(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()


def _shut(sock: socket.socket) -> None:
    """End a connection from outside its thread: its blocked read returns at once."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _landing(path: str, facts: dict[str, str]) -> bytes:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in facts.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>memledger</title></head>"
        "<body><h1>memledger</h1>"
        "<p>Per-boot ledger of EFI boot-services and low memory.</p>"
        f"<p><a href='{html.escape(path)}'>Metrics</a></p>"
        f"<table>{rows}</table></body></html>\n"
    ).encode()
