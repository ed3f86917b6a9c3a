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

With ``--web.config.file`` (exporters.webconfig), each new connection reads the file as
it is now: TLS, whose handshake runs on the connection's own thread under the header
deadline (a client that never finishes it holds no one up), and a client certificate
checked before any handler runs; each request checks basic auth. A request's sender is
an :class:`Identity` (certificate CN, else the basic-auth user) or None.

POST goes to the ``post`` hook, on the connection's thread, with the whole body: it needs
Content-Length (411 otherwise: no chunked bodies), at most ``max_body`` bytes (413,
the body unread), sent within ``body_deadline_s`` (else the connection is dropped). A
hook that raises is a 500 and one log line. Without a hook, POST answers 405.
"""

from __future__ import annotations

import contextlib
import errno
import html
import logging
import os
import re
import resource
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from memledger.exporters.webconfig import Identity, WebConfigError, WebConfigSource, peer_identity
from memledger.tracer.untrusted import printable
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ("BODY_DEADLINE_S", "CLIENT_TIMEOUT_S", "FD_RESERVE", "HEADER_DEADLINE_S",
           "MAX_BODY", "MAX_CONNECTIONS", "PostAnswer", "PostRequest", "WebServer",
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
# A POST's body: a capture is tens of KiB, and --spool.max-size's default is 16 MiB; 60 s
# carries 16 MiB at 2.3 Mbit/s. A client that sends it slower is dropped (a trickled body
# would hold a thread as a trickled header does).
MAX_BODY = 16 << 20
BODY_DEADLINE_S = 60.0
LISTEN_BACKLOG = 1024


def connection_cap() -> int:
    """How many HTTP connections may be open at once: MAX_CONNECTIONS, or fewer when the
    descriptor limit (RLIMIT_NOFILE) leaves less than FD_RESERVE for the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FD_RESERVE))


class _Conn:
    """One accepted connection, as its thread serves it."""

    __slots__ = ("identity", "limit", "pushable", "since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock  # the accepted socket, then its TLS wrapper
        self.since: float | None = time.monotonic()  # waiting since; None while answered
        self.limit = HEADER_DEADLINE_S  # how long it may wait
        self.pushable = True  # waiting for a handshake or headers: first out at the cap
        self.identity: Identity | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    max_connections = MAX_CONNECTIONS
    # The kernel's queue of connections not yet accepted (socketserver's default is 5).
    # A fleet's hosts rebooting together connect together: past the queue the kernel
    # drops their SYNs, and each client waits 1, 3, 7, 15, 31 s… before it tries again.
    # The kernel caps it at net.core.somaxconn.
    request_queue_size = LISTEN_BACKLOG
    web_config: WebConfigSource | None = None

    def server_activate(self) -> None:
        super().server_activate()
        self._open: set[_Conn] = set()
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
        conn = _Conn(request)
        with self._open_lock:
            if len(self._open) >= self.max_connections:
                waiting = [c for c in self._open if c.since is not None and c.pushable]
                if not waiting:
                    self.close_request(request)
                    return
                oldest = min(waiting, key=lambda c: c.since or 0.0)
                _shut(oldest.sock)
                self._open.discard(oldest)
            self._open.add(conn)
        # The connection's own thread does the TLS handshake, then serves its requests.
        try:
            super().process_request(conn, client_address)  # type: ignore[arg-type]
        except BaseException:
            with self._open_lock:
                self._open.discard(conn)
            raise

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn: _Conn = request
        if self.web_config is not None:
            try:
                cfg = self.web_config.current()
            except WebConfigError:
                return  # logged once by the source; the connection is closed
            if cfg.tls is not None:
                with self._open_lock:
                    if conn not in self._open:  # pushed out already
                        return
                    conn.sock.settimeout(CLIENT_TIMEOUT_S)
                    conn.sock = cfg.tls.wrap_socket(conn.sock, server_side=True,
                                                    do_handshake_on_connect=False)
                assert isinstance(conn.sock, ssl.SSLSocket)
                try:
                    conn.sock.do_handshake()
                except (OSError, ValueError) as exc:
                    log.debug("HTTP client %s: TLS handshake failed: %s", client_address, exc)
                    return
                admitted, conn.identity = peer_identity(conn.sock, cfg.allowed_sans)
                if not admitted:
                    log.debug("HTTP client %s: its certificate has none of "
                              "client_allowed_sans", client_address)
                    return
        self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]

    def shutdown_request(self, request: Any) -> None:
        if isinstance(request, _Conn):
            with self._open_lock:
                self._open.discard(request)
            request = request.sock
        super().shutdown_request(request)

    def close_request(self, request: Any) -> None:
        super().close_request(request.sock if isinstance(request, _Conn) else request)

    def wait(self, conn: _Conn, limit: float, pushable: bool) -> None:
        """The connection waits for its client (for at most ``limit`` seconds in all)."""
        with self._open_lock:
            if conn.since is None:
                conn.since = time.monotonic()
            conn.limit, conn.pushable = limit, pushable

    def busy(self, conn: _Conn) -> None:
        """The connection is being answered."""
        with self._open_lock:
            conn.since = None

    def service_actions(self) -> None:
        """Runs in serve_forever's loop (every 0.5 s): drop clients past their deadline
        (a TLS handshake and a request's headers, or a request's body)."""
        now = time.monotonic()
        with self._open_lock:
            for c in self._open:
                if c.since is not None and now - c.since > c.limit:
                    _shut(c.sock)
                    c.since = None  # shut once; its thread closes it

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls is its own business (socketserver would print a
        traceback to stderr, the journal); anything else is one log line."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError | ssl.SSLError):
            log.debug("HTTP client %s: %s", client_address, exc)
        else:
            log.error("HTTP request from %s failed: %s: %s", client_address,
                      type(exc).__name__, exc)
    allow_reuse_address = True


def _server_class(host: str) -> type[_Server]:
    if ":" in host:
        return type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    return _Server


@dataclass(frozen=True, slots=True)
class PostRequest:
    """A POST's whole body and who sent it. ``path`` is the request target as sent (path
    and query); ``headers`` are the request's, without Authorization."""

    path: str
    body: bytes
    identity: Identity | None
    headers: Message


@dataclass(frozen=True, slots=True)
class PostAnswer:
    """What the POST hook answers. Content-Type defaults to text/plain; charset=utf-8
    (a one-line body); the server sets Content-Length."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


_TEXT = "text/plain; charset=utf-8"


class WebServer:
    """Binds at construction (so READY=1 can follow), serves on a thread after start().

    ``web_config``: a ``--web.config.file`` (exporters.webconfig), read again when it
    changes: TLS, client certificates, basic auth and extra response headers. It is read
    once here, and an invalid file raises WebConfigError. ``post``: called on the
    connection's thread with each POST's whole body (at most ``max_body`` bytes, sent
    within ``body_deadline_s``); without it, POST answers 405.
    """

    def __init__(self, listen: str, telemetry_path: str, registry: CollectorRegistry,
                 landing: Callable[[], dict[str, str]],
                 rendered: Callable[[], bytes] | None = None, *,
                 web_config: str | os.PathLike[str] | None = None,
                 post: Callable[[PostRequest], PostAnswer] | None = None,
                 max_body: int = MAX_BODY, body_deadline_s: float = BODY_DEADLINE_S) -> None:
        host, port = parse_listen_address(listen)
        path = telemetry_path if telemetry_path.startswith("/") else "/" + telemetry_path
        source = WebConfigSource(web_config) if web_config is not None else None
        if source is not None:
            source.current()  # raises WebConfigError for an invalid file

        class Handler(BaseHTTPRequestHandler):
            server_version = "memledger"
            protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes
            # A client that sends nothing (or reads nothing) for this long is dropped, so
            # stalled connections cannot pile up threads (slowloris).
            timeout = CLIENT_TIMEOUT_S
            extra: dict[str, str] = {}  # noqa: RUF012 (replaced, never changed in place)

            def setup(self) -> None:
                self.conn: _Conn = self.request
                self.request = self.conn.sock
                self.identity: Identity | None = None
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # access logs would flood the journal at every scrape

            def handle_one_request(self) -> None:
                self.server.wait(self.conn, HEADER_DEADLINE_S, True)  # type: ignore[attr-defined]
                super().handle_one_request()

            def parse_request(self) -> bool:
                ok = super().parse_request()  # reads the request line's headers
                self.server.busy(self.conn)  # type: ignore[attr-defined]
                return ok

            def end_headers(self) -> None:
                for name, value in self.extra.items():
                    self.send_header(name, value)
                super().end_headers()

            def _send(self, code: int, ctype: str, body: bytes,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _admit(self) -> bool:
                """Checks the request against the web configuration as it is now: a
                refused request is answered here."""
                self.identity = self.conn.identity
                if source is None:
                    return True
                try:
                    cfg = source.current()
                except WebConfigError:
                    self.close_connection = True
                    self._send(500, _TEXT, b"the web configuration is invalid; see the log\n")
                    return False
                self.extra = cfg.headers
                if cfg.users:
                    user = source.authenticate(cfg, self.headers.get("Authorization"))
                    if user is None:
                        # A POST's unread body cannot stay on the connection.
                        self.close_connection = self.close_connection or self.command == "POST"
                        self._send(401, _TEXT, b"unauthorized\n", {"WWW-Authenticate": "Basic"})
                        return False
                    self.identity = self.identity or Identity("user", user)
                return True

            def do_GET(self) -> None:
                if not self._admit():
                    return
                route = self.path.split("?", 1)[0]
                if route == path:
                    try:
                        body = server._metrics()
                    except Exception as exc:  # a failing collector is a 500, not a dead thread
                        self._send(500, _TEXT, f"{exc}\n".encode())
                        return
                    self._send(200, CONTENT_TYPE_LATEST, body)
                elif route == "/":
                    self._send(200, "text/html; charset=utf-8", _landing(path, landing()))
                else:
                    self._send(404, _TEXT, b"not found\n")

            do_HEAD = do_GET

            def do_POST(self) -> None:
                if not self._admit():
                    return
                body = self._body()
                if body is None:
                    return
                del self.headers["Authorization"]
                request = PostRequest(self.path, body, self.identity, self.headers)
                try:
                    answer = post(request)  # type: ignore[misc]
                    status, headers, content = _checked(answer)
                except Exception as exc:  # the hook's failure is a 500, not a dead thread
                    log.error("POST %s from %s: the handler failed: %s: %s",
                              printable(self.path), self.client_address[0],
                              type(exc).__name__, exc)
                    self._send(500, _TEXT, b"internal error: the request was not handled\n")
                    return
                ctype = headers.pop("Content-Type", _TEXT)
                self._send(status, ctype, content, headers)

            def _body(self) -> bytes | None:
                """The request's whole body, or None when it has been answered."""
                if post is None:
                    self.close_connection = True
                    self._send(405, _TEXT, b"method not allowed\n", {"Allow": "GET, HEAD"})
                    return None
                lengths = self.headers.get_all("Content-Length") or []
                if "Transfer-Encoding" in self.headers or not lengths:
                    self.close_connection = True
                    self._send(411, _TEXT, b"length required: send Content-Length "
                                           b"(no chunked encoding)\n")
                    return None
                if len(lengths) > 1 or not lengths[0].strip().isdigit():
                    self.close_connection = True
                    self._send(400, _TEXT, b"bad Content-Length\n")
                    return None
                length = int(lengths[0])
                if length > max_body:
                    self.close_connection = True
                    self._send(413, _TEXT, f"content too large: at most {max_body} "
                                           "bytes\n".encode())
                    return None
                self.server.wait(self.conn, body_deadline_s, False)  # type: ignore[attr-defined]
                try:
                    body = self.rfile.read(length)
                except (OSError, ValueError):
                    body = b""
                self.server.busy(self.conn)  # type: ignore[attr-defined]
                if len(body) < length:  # dropped at the deadline, or the client went
                    self.close_connection = True
                    log.debug("POST %s from %s: the body was not sent in time",
                              printable(self.path), self.client_address[0])
                    return None
                return body

        server = self
        self.web_config = source
        self._registry, self._rendered = registry, rendered
        self._render_lock = threading.Lock()
        self._last: tuple[float, bytes] | None = None  # (when its rendering started, body)
        self.path = path
        self.httpd = _server_class(host)((host, port), Handler)
        self.httpd.max_connections = connection_cap()
        self.httpd.web_config = source
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
    def scheme(self) -> str:
        """``https`` when the web configuration (as it is now) serves TLS."""
        try:
            tls = self.web_config is not None and self.web_config.current().tls is not None
        except WebConfigError:
            tls = False
        return "https" if tls else "http"

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
    """End a connection from outside its thread: its blocked read returns at once. The
    plain socket's shutdown, also under TLS: the TLS state stays its thread's alone."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _checked(answer: PostAnswer) -> tuple[int, dict[str, str], bytes]:
    """The hook's answer, checked before any of it is sent."""
    if not isinstance(answer, PostAnswer) or not 200 <= answer.status <= 599:
        raise ValueError(f"not an answer: {answer!r:.200}")
    headers = dict(answer.headers)
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or re.search(r"[\x00-\x1f\x7f]", value):
            raise ValueError(f"bad header {name!r:.100}")
        if name.lower() in ("content-length", "connection", "transfer-encoding"):
            raise ValueError(f"header {name} is the server's")
    ctype = next((k for k in headers if k.lower() == "content-type"), None)
    if ctype is not None and ctype != "Content-Type":
        headers["Content-Type"] = headers.pop(ctype)
    return answer.status, headers, bytes(answer.body)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


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
