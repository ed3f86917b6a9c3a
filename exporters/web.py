"""The daemon's HTTP side: ``--web.telemetry-path`` (default /metrics) and a landing page.

A ThreadingHTTPServer serves each request on its own thread, so one slow client does not
hold up the others, and drops a client silent for CLIENT_TIMEOUT_S; metrics come from the
registry's collectors at scrape time.
"""

from __future__ import annotations

import html
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ("CLIENT_TIMEOUT_S", "WebServer", "parse_listen_address")

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

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
