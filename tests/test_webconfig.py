"""``--web.config.file``: TLS, client certificates, basic auth and the POST hook of the
daemon's HTTP server, with real TLS (certificates from tests/pki.py, made by openssl),
real clients (Python's ssl and http.client, curl) and the real daemon for the command
line and for a file broken while it runs.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from conftest import MEMLEDGER
from daemonrun import Daemon, wait_for
from memledger.exporters.web import HEADER_DEADLINE_S, PostAnswer, PostRequest, WebServer
from memledger.exporters.webconfig import Identity, WebConfigError, load_web_config
from pki import CA, Issued, make_ca
from prometheus_client import CollectorRegistry, Gauge

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

PASSWORD = "s3cret:with colon"


class PKI:
    def __init__(self, root: Path) -> None:
        self.ca: CA = make_ca(root / "ca")
        self.other: CA = make_ca(root / "other", "other")
        self.server: Issued = self.ca.issue("server", dns=("localhost",), ips=("127.0.0.1",))
        self.server2: Issued = self.ca.issue("server2", dns=("localhost",), ips=("127.0.0.1",))
        self.host_a: Issued = self.ca.issue("host-a", client=True, dns=("host-a.fleet",))
        self.host_b: Issued = self.ca.issue("host-b", client=True, dns=("host-b.fleet",))
        self.stranger: Issued = self.other.issue("host-a", client=True, dns=("host-a.fleet",))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def _tls_block(pki: PKI, auth: str | None = None, extra: str = "") -> str:
    text = (f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n")
    if auth:
        text += f"  client_auth_type: {auth}\n  client_ca_file: {pki.ca.cert}\n"
    return text + extra


def _write(path: Path, text: str) -> None:
    """Replace the file at once, as an operator's deploy tool does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Served:
    def __init__(self, ws: WebServer, posts: list[PostRequest]) -> None:
        self.ws, self.posts = ws, posts
        host, port = ws.address.rsplit(":", 1)
        self.host, self.port = host, int(port)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[WebServer] = []

    def start(config: str | None, *, hook: bool = True, raise_in_hook: bool = False,
              **kw: Any) -> Served:
        path = None
        if config is not None:
            path = tmp_path / "web.yml"
            _write(path, config)
        registry = CollectorRegistry()
        Gauge("memledger_test_up", "a test gauge", registry=registry).set(1)
        posts: list[PostRequest] = []

        def post(req: PostRequest) -> PostAnswer:
            if raise_in_hook:
                raise RuntimeError("the hook broke")
            posts.append(req)
            who = f"{req.identity.kind}:{req.identity.name}" if req.identity else "anonymous"
            return PostAnswer(202, {"X-Who": who}, f"stored {len(req.body)} bytes\n".encode())

        ws = WebServer("127.0.0.1:0", "/metrics", registry, lambda: {"k": "v"},
                       web_config=path, post=post if hook else None, **kw)
        ws.start()
        started.append(ws)
        return Served(ws, posts)

    yield start
    for ws in started:
        ws.stop()


def _client_ctx(pki: PKI, cert: Issued | None = None, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca or pki.ca.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def _auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _request(s: Served, method: str = "GET", path: str = "/metrics", *,
             ctx: ssl.SSLContext | None = None, headers: dict[str, str] | None = None,
             body: bytes | None = None,
             conn: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, str], bytes]:
    c = conn or (http.client.HTTPSConnection(s.host, s.port, context=ctx, timeout=20) if ctx
                 else http.client.HTTPConnection(s.host, s.port, timeout=20))
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    if conn is None:
        c.close()
    return out


def _refusal(s: Served, ctx: ssl.SSLContext) -> str:
    """Handshake as a client, then read: what the server's refusal reads as (TLS 1.3
    reports a refused client certificate after the client's side of the handshake)."""
    with socket.create_connection((s.host, s.port), timeout=20) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                data = tls.recv(100)
                return f"read {data!r}"
        except (ssl.SSLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"


# TLS


def test_tls_scrape_with_the_ca_and_refusals(pki: PKI, serve: Any, tmp_path: Path) -> None:
    s = serve(_tls_block(pki))
    assert s.ws.scheme == "https"
    status, _, body = _request(s, ctx=_client_ctx(pki))
    assert status == 200 and b"memledger_test_up 1.0" in body
    # curl, as an operator would check it
    out = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca.cert),
                          f"https://127.0.0.1:{s.port}/"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "<h1>memledger</h1>" in out.stdout, out.stderr
    # Plain HTTP to the TLS port gets no HTTP answer.
    with pytest.raises((http.client.HTTPException, OSError)):
        _request(s)
    # A client that does not trust the server's CA refuses it.
    with pytest.raises(ssl.SSLCertVerificationError):
        _request(s, ctx=_client_ctx(pki, ca=pki.other.cert))
    assert _request(s, ctx=_client_ctx(pki))[0] == 200  # still serving


def test_require_and_verify_client_cert(pki: PKI, serve: Any) -> None:
    s = serve(_tls_block(pki, "RequireAndVerifyClientCert"))
    status, headers, body = _request(s, "POST", "/v1/captures", body=b"abc",
                                     ctx=_client_ctx(pki, pki.host_a))
    assert (status, headers["X-Who"], body) == (202, "certificate:host-a", b"stored 3 bytes\n")
    assert s.posts[0].identity == Identity("certificate", "host-a")
    assert (s.posts[0].path, s.posts[0].body) == ("/v1/captures", b"abc")
    assert "CERTIFICATE_REQUIRED" in _refusal(s, _client_ctx(pki))  # no client certificate
    assert "UNKNOWN_CA" in _refusal(s, _client_ctx(pki, pki.stranger))  # another CA's
    with pytest.raises((http.client.HTTPException, OSError)):
        _request(s, "POST", "/v1/captures", body=b"x", ctx=_client_ctx(pki, pki.stranger))
    assert len(s.posts) == 1  # no refused client reached the hook


def test_verify_client_cert_if_given(pki: PKI, serve: Any) -> None:
    s = serve(_tls_block(pki, "VerifyClientCertIfGiven"))
    assert _request(s, "POST", "/", body=b"", ctx=_client_ctx(pki))[1]["X-Who"] == "anonymous"
    assert _request(s, "POST", "/", body=b"",
                    ctx=_client_ctx(pki, pki.host_b))[1]["X-Who"] == "certificate:host-b"
    assert "UNKNOWN_CA" in _refusal(s, _client_ctx(pki, pki.stranger))


def test_client_allowed_sans(pki: PKI, serve: Any) -> None:
    s = serve(_tls_block(pki, "RequireAndVerifyClientCert",
                         "  client_allowed_sans: [host-a.fleet, 10.0.0.1]\n"))
    assert _request(s, "POST", "/", body=b"x",
                    ctx=_client_ctx(pki, pki.host_a))[1]["X-Who"] == "certificate:host-a"
    with pytest.raises((http.client.HTTPException, OSError)):
        _request(s, "POST", "/", body=b"x", ctx=_client_ctx(pki, pki.host_b))
    assert [p.identity for p in s.posts] == [Identity("certificate", "host-a")]


def test_a_stalled_handshake_blocks_no_one_and_is_dropped(pki: PKI, serve: Any) -> None:
    s = serve(_tls_block(pki))
    stalled = []
    for _ in range(3):
        c = socket.create_connection((s.host, s.port), timeout=HEADER_DEADLINE_S + 20)
        c.sendall(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello, never the rest
        stalled.append(c)
    assert _request(s, ctx=_client_ctx(pki))[0] == 200  # served meanwhile
    for c in stalled:
        assert c.recv(100) == b""  # dropped at the deadline (else the timeout raises)
        c.close()


def test_a_rotated_certificate_is_served_at_the_next_connection(pki: PKI, serve: Any,
                                                                 tmp_path: Path) -> None:
    crt, key = tmp_path / "live.crt", tmp_path / "live.key"
    crt.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    s = serve("tls_server_config:\n  cert_file: live.crt\n  key_file: live.key\n")  # relative

    def serial() -> str:
        with socket.create_connection((s.host, s.port), timeout=20) as raw, \
                _client_ctx(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            cert = tls.getpeercert()
            assert cert
            return str(cert["serialNumber"])

    first = serial()
    for src, dst in ((pki.server2.key, key), (pki.server2.cert, crt)):
        _write(dst, src.read_text())
    second = serial()
    want = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(pki.server2.cert)],
                          capture_output=True, text=True, check=True).stdout
    assert second != first and want.strip() == f"serial={second}"


# basic auth


def test_basic_auth_on_every_route(serve: Any, tmp_path: Path) -> None:
    s = serve(f"basic_auth_users:\n  alice: '{_hash(PASSWORD)}'\n")
    assert s.ws.scheme == "http"
    for method, path in (("GET", "/metrics"), ("GET", "/"), ("POST", "/x")):
        for headers in ({}, _auth("alice", "wrong"), _auth("mallory", PASSWORD),
                        {"Authorization": "Bearer abc"}):
            status, got, _ = _request(s, method, path, headers=headers, body=b"b")
            assert (status, got.get("WWW-Authenticate")) == (401, "Basic"), (method, path, headers)
    assert s.posts == []
    status, _, body = _request(s, headers=_auth("alice", PASSWORD))
    assert status == 200 and b"memledger_test_up 1.0" in body
    status, got, _ = _request(s, "POST", "/x", headers=_auth("alice", PASSWORD), body=b"hello")
    assert (status, got["X-Who"]) == (202, "user:alice")
    assert s.posts[0].identity == Identity("user", "alice")
    assert s.posts[0].headers.get("Authorization") is None  # the hook never sees the password
    source = s.ws.web_config
    assert source is not None
    assert source.cached("alice", PASSWORD) is True  # verified once, then from the cache
    assert source.cached("alice", "wrong") is False
    assert source.cached("alice", "never tried") is None


def test_changed_users_apply_to_the_next_request(serve: Any, tmp_path: Path) -> None:
    s = serve(f"basic_auth_users:\n  alice: '{_hash(PASSWORD)}'\n")
    conn = http.client.HTTPConnection(s.host, s.port, timeout=20)  # one kept-alive connection
    assert _request(s, headers=_auth("alice", PASSWORD), conn=conn)[0] == 200
    _write(tmp_path / "web.yml", f"basic_auth_users:\n  bob: '{_hash('other')}'\n")
    assert _request(s, headers=_auth("alice", PASSWORD), conn=conn)[0] == 401
    assert _request(s, headers=_auth("bob", "other"), conn=conn)[0] == 200
    conn.close()


def test_cert_identity_comes_before_the_user(pki: PKI, serve: Any) -> None:
    s = serve(_tls_block(pki, "RequireAndVerifyClientCert",
                         f"basic_auth_users:\n  alice: '{_hash(PASSWORD)}'\n"))
    ctx = _client_ctx(pki, pki.host_a)
    assert _request(s, "POST", "/", ctx=ctx, body=b"x")[0] == 401  # basic auth still required
    got = _request(s, "POST", "/", ctx=ctx, body=b"x", headers=_auth("alice", PASSWORD))[1]
    assert got["X-Who"] == "certificate:host-a"


def test_extra_headers(serve: Any) -> None:
    s = serve("http_server_config:\n  http2: false\n  headers:\n"
              "    X-Frame-Options: deny\n    Content-Security-Policy: default-src 'none'\n")
    headers = _request(s)[1]
    assert (headers["X-Frame-Options"], headers["Content-Security-Policy"]) == \
        ("deny", "default-src 'none'")


# the POST hook


def _raw(s: Served, data: bytes, read_all: bool = True) -> bytes:
    with socket.create_connection((s.host, s.port), timeout=20) as c:
        c.sendall(data)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
            if not read_all:
                break
        return out


def test_post_without_length_too_large_or_without_hook(serve: Any) -> None:
    s = serve(None, max_body=100)
    head = b"POST /x HTTP/1.1\r\nHost: x\r\n"
    chunked = _raw(s, head + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    assert _raw(s, head + b"\r\n").startswith(b"HTTP/1.1 411 ")
    # Too large: answered at once, the body never sent nor read.
    big = _raw(s, head + b"Content-Length: 101\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 413 ") and b"at most 100 bytes" in big
    assert _request(s, "POST", "/x", body=b"x" * 100)[0] == 202
    assert [len(p.body) for p in s.posts] == [100]
    s2 = serve(None, hook=False)
    status, headers, _ = _request(s2, "POST", "/x", body=b"x")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    assert _request(s2)[0] == 200


def test_a_hook_that_raises_answers_500_and_the_server_serves_on(
        serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    s = serve(None, raise_in_hook=True)
    with caplog.at_level(logging.ERROR, logger="memledger.exporters.web"):
        status, _, body = _request(s, "POST", "/x", body=b"abc")
    assert status == 500 and body.count(b"\n") == 1
    assert [r.getMessage() for r in caplog.records] == [
        "POST /x from 127.0.0.1: the handler failed: RuntimeError: the hook broke"]
    assert _request(s)[0] == 200


def test_a_trickled_body_is_dropped(serve: Any) -> None:
    s = serve(None, body_deadline_s=2.0)
    with socket.create_connection((s.host, s.port), timeout=30) as c:
        c.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        closed = None
        for _ in range(100):  # a byte every 0.5 s would take 50 s
            try:
                c.sendall(b"x")
                c.settimeout(0.5)
                closed = c.recv(100)  # b"": closed without an answer
                break
            except TimeoutError:
                continue
            except OSError as exc:  # reset: closed while the client still sent
                closed = repr(exc).encode()
                break
        assert closed is not None and not closed.startswith(b"HTTP"), closed
    assert s.posts == []
    assert _request(s)[0] == 200


# the file's errors


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    return str(info.value)


def test_errors_name_the_file_and_line(pki: PKI, tmp_path: Path) -> None:
    f = tmp_path / "bad.yml"
    cases = {
        "tls_server_config:\n  cert_file: x\n  key_fil: y\n":
            f"{f}: line 3: tls_server_config: unknown key 'key_fil'",
        "basic_auth_user:\n  a: b\n": f"{f}: line 1: unknown key 'basic_auth_user'",
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n":
            f"{f}: line 2: cert_file {tmp_path / 'missing.crt'}: No such file or directory",
        _tls_block(pki) + "  client_auth_type: RequireAndVerify\n":
            f"{f}: line 4: tls_server_config: client_auth_type 'RequireAndVerify': expected one of "
            "NoClientCert, RequestClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert",
        _tls_block(pki) + "  client_auth_type: RequireAnyClientCert\n":
            f"{f}: line 4: tls_server_config: client_auth_type RequireAnyClientCert is not "
            "supported by memledger (a certificate is always verified); use "
            "RequireAndVerifyClientCert with client_ca_file",
        _tls_block(pki) + "  client_auth_type: RequireAndVerifyClientCert\n":
            f"{f}: line 4: tls_server_config: client_auth_type RequireAndVerifyClientCert "
            "needs client_ca_file",
        _tls_block(pki) + f"  client_ca_file: {pki.ca.cert}\n":
            f"{f}: line 4: tls_server_config: client_ca_file is set but client_auth_type "
            "NoClientCert verifies no client certificate",
        _tls_block(pki) + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n":
            f"{f}: line 4: tls_server_config: cipher_suites is not supported by memledger "
            "(OpenSSL's default cipher suites apply); remove it",
        _tls_block(pki) + "  min_version: TLS14\n":
            f"{f}: line 4: tls_server_config: min_version 'TLS14': expected one of "
            "TLS10, TLS11, TLS12, TLS13",
        _tls_block(pki, "VerifyClientCertIfGiven", "  client_allowed_sans: [a]\n"):
            f"{f}: line 6: tls_server_config: client_allowed_sans requires client_auth_type "
            "RequireAndVerifyClientCert",
        f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server2.key}\n":
            f"{f}: line 2: tls_server_config: cert_file and key_file: cannot load the "
            "certificate and key: KEY_VALUES_MISMATCH",
        "tls_server_config:\n  min_version: TLS13\n":
            f"{f}: line 2: tls_server_config: missing one of cert or cert_file",
        "basic_auth_users:\n  alice: secret\n":
            f"{f}: line 2: basic_auth_users: alice: not a bcrypt hash (expected $2y$10$ and 53 "
            "characters)",
        "http_server_config:\n  headers:\n    Server: x\n":
            f"{f}: line 3: http_server_config: headers: 'Server' cannot be set (only "
            "Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, "
            "X-XSS-Protection, Content-Security-Policy)",
        "rate_limit:\n  burst: 1\n":
            f"{f}: line 1: rate_limit is not supported by memledger (its connections are "
            "capped instead); remove it",
        "basic_auth_users: [\n": f"{f}: line 2: not YAML: expected the node content, but found '<stream end>'",
        "basic_auth_users:\n  a: '$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG'\n"
        "  a: '$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG'\n":
            f"{f}: line 3: basic_auth_users: 'a' given twice",
    }
    got = {text: _error(tmp_path, text) for text in cases}
    assert got == cases


def test_inline_pem_and_an_empty_file(pki: PKI, tmp_path: Path) -> None:
    def indent(p: Path) -> str:
        return "".join(f"    {line}\n" for line in p.read_text().splitlines())

    path = tmp_path / "inline.yml"
    path.write_text(f"tls_server_config:\n  cert: |\n{indent(pki.server.cert)}"
                    f"  key: |\n{indent(pki.server.key)}"
                    f"  client_auth_type: RequireAndVerifyClientCert\n"
                    f"  client_ca: |\n{indent(pki.ca.cert)}")
    cfg = load_web_config(path)
    assert cfg.tls is not None and cfg.tls.verify_mode == ssl.CERT_REQUIRED
    (tmp_path / "empty.yml").write_text("")
    empty = load_web_config(tmp_path / "empty.yml")
    assert (empty.tls, empty.users, empty.headers) == (None, {}, {})


def test_the_daemon_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  bogus: 1\n")
    out = subprocess.run([MEMLEDGER, "daemon", "--db", f"sqlite:///{tmp_path / 'm.db'}",
                          "--spool", str(tmp_path / "spool"), "--no-capture-self",
                          "--web.listen-address", "127.0.0.1:0", "--web.config.file", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr == (f"memledger: error: {bad}: line 4: tls_server_config: unknown key "
                          "'bogus'\n")


def test_a_file_broken_at_runtime_is_logged_once_and_fixing_it_restores_service(
        pki: PKI, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    good = f"basic_auth_users:\n  alice: '{_hash(PASSWORD)}'\n"
    web.write_text(good)
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "spool",
               env={"MEMLEDGER_WEB_CONFIG_FILE": str(web)})
    host, port = d.address.rsplit(":", 1)
    s = Served.__new__(Served)
    s.host, s.port = host, int(port)
    status, _, body = _request(s, headers=_auth("alice", PASSWORD))
    assert status == 200 and b"memledger_store_up 1" in body
    assert _request(s)[0] == 401
    _write(web, good + "  bob: [\n")
    for _ in range(3):
        with pytest.raises((http.client.HTTPException, OSError)):
            _request(s, headers=_auth("alice", PASSWORD))
    line = (f"ERROR {web}: line 4: not YAML: expected the node content, but found "
            "'<stream end>'; refusing HTTP connections until it is fixed")
    assert d.text().count(line) == 1, d.text()
    assert d.proc.poll() is None
    _write(web, good)
    assert _request(s, headers=_auth("alice", PASSWORD))[0] == 200
    wait_for("the log line", lambda: f"INFO {web}: valid again" in d.text(), 10)
    assert d.stop() == 0
    assert "Traceback" not in d.text()

