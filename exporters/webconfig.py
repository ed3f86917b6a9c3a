"""``--web.config.file``: TLS and authentication for the daemon's HTTP server, in the
Prometheus exporter-toolkit's web configuration format.

The keys and their meanings are the exporter-toolkit's; where memledger differs, it
refuses rather than ignore a setting that would leave the server weaker than the file
says:

- ``tls_server_config``: ``cert_file``/``key_file`` (or inline PEM ``cert``/``key``),
  ``client_auth_type``, ``client_ca_file`` (or inline ``client_ca``), ``min_version``
  (default TLS12), ``max_version`` (default TLS13), ``client_allowed_sans``,
  ``prefer_server_cipher_suites`` (default true). ``cipher_suites`` and
  ``curve_preferences`` are refused: they restrict the handshake, and OpenSSL's
  defaults are all memledger offers. ``RequireAnyClientCert`` (and its old name
  ``RequireClientCert``) is refused: Python's ssl cannot ask for a certificate without
  verifying it. ``RequestClientCert`` is accepted and asks for no certificate: a
  certificate that is not verified is never an identity, so nothing is lost. A
  ``client_auth_type`` that verifies needs ``client_ca_file`` (the system's CAs are
  never trusted for clients). A non-empty ``tls_server_config`` without a certificate
  is an error (the exporter-toolkit would serve plain HTTP).
- ``http_server_config``: ``headers`` (the exporter-toolkit's five, with its allowed
  values) and ``http2`` (accepted; memledger speaks HTTP/1.1, so it has no effect).
- ``basic_auth_users``: user → bcrypt hash. A verified (user, hash, password) is
  cached, so a scrape pays bcrypt once, not at every request.
- ``rate_limit`` is refused (connections are capped instead).

Unknown keys and duplicate keys are errors. Relative paths are relative to the file's
directory. Every error is one line, ``FILE: line N: what is wrong``.

:class:`WebConfigSource` reads the file again whenever it or a file it names changes
(by their stat), so a rotated certificate or a changed user takes effect at the next
connection or request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import logging
import os
import re
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml

__all__ = ("Identity", "WebConfig", "WebConfigError", "WebConfigSource", "load_web_config",
           "peer_identity")

log = logging.getLogger("memledger.web")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a request: a verified client certificate's subject CN (its first DNS
    name when it has no CN), else the basic-auth user."""

    kind: Literal["certificate", "user"]
    name: str


class WebConfigError(ValueError):
    """A web configuration file that cannot be used; its text is one line."""


_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# The response headers a file may set, and their allowed values (None: any).
_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_TLS_KEYS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
             "client_ca_file", "min_version", "max_version", "client_allowed_sans",
             "prefer_server_cipher_suites", "cipher_suites", "curve_preferences")
_BCRYPT = re.compile(r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}")
_CACHE_SIZE = 100  # verified (user, hash, password) triples kept


@dataclass(frozen=True)
class WebConfig:
    """One reading of the file: ``tls`` is None for plain HTTP."""

    path: Path
    tls: ssl.SSLContext | None = None
    allowed_sans: frozenset[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # user -> bcrypt hash


class _Reader:
    """Walks the YAML nodes, so that every error can name its line; collects the files
    the configuration names (for the change check)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: list[Path] = []

    def error(self, node: yaml.Node | None, what: str) -> WebConfigError:
        line = f"line {node.start_mark.line + 1}: " if node is not None else ""
        return WebConfigError(f"{self.path}: {line}{what}")

    def mapping(self, node: yaml.Node, where: str,
                allowed: tuple[str, ...] | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{where}: expected a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.error(k, f"{where}: expected a key")
            name = str(k.value)
            if allowed is not None and name not in allowed:
                raise self.error(k, f"{where}: unknown key {name!r}")
            if name in out:
                raise self.error(k, f"{where}: {name!r} given twice")
            out[name] = (k, v)
        return out

    def string(self, node: yaml.Node, where: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.error(node, f"{where}: expected a string")
        return str(node.value)

    def boolean(self, node: yaml.Node, where: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.error(node, f"{where}: expected true or false")
        return bool(yaml.safe_load(node.value))

    def strings(self, node: yaml.Node, where: str) -> list[str]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{where}: expected a list of strings")
        return [self.string(n, where) for n in node.value]

    def file(self, node: yaml.Node, where: str) -> Path:
        text = self.string(node, where)
        if not text:
            raise self.error(node, f"{where}: empty")
        p = self.path.parent / text  # an absolute path stays itself
        self.files.append(p)
        try:
            with p.open("rb"):
                pass
        except OSError as exc:
            raise self.error(node, f"{where} {p}: {exc.strerror or exc}") from None
        return p


def _pem_file(pem: str) -> int:
    """An anonymous file holding ``pem`` (ssl loads certificates and keys from paths
    only); the caller closes it."""
    fd = os.memfd_create("memledger-web-pem", os.MFD_CLOEXEC)
    os.write(fd, pem.encode())
    return fd


def _tls(r: _Reader, node: yaml.Node) -> tuple[ssl.SSLContext | None, frozenset[str] | None]:
    keys = r.mapping(node, "tls_server_config", _TLS_KEYS)
    if not keys:
        return None, None
    for name, why in (("cipher_suites", "OpenSSL's default cipher suites apply"),
                      ("curve_preferences", "OpenSSL's default curves apply")):
        if name in keys:
            raise r.error(keys[name][0], f"tls_server_config: {name} is not supported "
                                         f"by memledger ({why}); remove it")
    for inline, path in (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file")):
        if inline in keys and path in keys:
            raise r.error(keys[inline][0], f"tls_server_config: {inline} and {path}: give one")
    if not ({"cert", "cert_file"} & keys.keys()):
        raise r.error(node, "tls_server_config: missing one of cert or cert_file")
    if not ({"key", "key_file"} & keys.keys()):
        raise r.error(node, "tls_server_config: missing one of key or key_file")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        text = r.string(keys[name][1], name) if name in keys else default
        if text not in _TLS_VERSIONS:
            raise r.error(keys[name][1], f"tls_server_config: {name} {text!r}: expected one "
                                         f"of {', '.join(_TLS_VERSIONS)}")
        versions[name] = _TLS_VERSIONS[text]
    if versions["min_version"] > versions["max_version"]:
        raise r.error(keys["min_version"][1] if "min_version" in keys else keys["max_version"][1],
                      "tls_server_config: min_version is above max_version")
    try:
        ctx.minimum_version = versions["min_version"]
        ctx.maximum_version = versions["max_version"]
    except (ValueError, ssl.SSLError) as exc:
        raise r.error(node, f"tls_server_config: TLS versions: {exc}") from None

    fds: list[int] = []
    try:
        where: list[str] = []
        paths: list[str] = []
        for inline, name in (("cert", "cert_file"), ("key", "key_file")):
            if name in keys:
                paths.append(str(r.file(keys[name][1], name)))
                where.append(name)
            else:
                fds.append(_pem_file(r.string(keys[inline][1], inline)))
                paths.append(f"/proc/self/fd/{fds[-1]}")
                where.append(inline)
        try:
            ctx.load_cert_chain(paths[0], paths[1])
        except (ssl.SSLError, OSError) as exc:
            at = keys["cert_file" if "cert_file" in keys else "cert"][0]
            raise r.error(at, f"tls_server_config: {' and '.join(where)}: cannot load the "
                              f"certificate and key: {_ssl_reason(exc)}") from None
    finally:
        for fd in fds:
            os.close(fd)

    auth_node = keys.get("client_auth_type")
    auth = r.string(auth_node[1], "client_auth_type") if auth_node else "NoClientCert"
    if auth in ("RequireAnyClientCert", "RequireClientCert"):
        assert auth_node is not None
        raise r.error(auth_node[1], f"tls_server_config: client_auth_type {auth} is not "
                                    "supported by memledger (a certificate is always verified); "
                                    "use RequireAndVerifyClientCert with client_ca_file")
    if auth not in _CLIENT_AUTH:
        assert auth_node is not None
        raise r.error(auth_node[1], f"tls_server_config: client_auth_type {auth!r}: expected "
                                    "one of NoClientCert, RequestClientCert, "
                                    "VerifyClientCertIfGiven, RequireAndVerifyClientCert")
    ca_key = "client_ca_file" if "client_ca_file" in keys else "client_ca" if "client_ca" in keys else None
    if ca_key and auth in ("NoClientCert", "RequestClientCert"):
        raise r.error(keys[ca_key][0], f"tls_server_config: {ca_key} is set but client_auth_type "
                                       f"{auth} verifies no client certificate")
    ctx.verify_mode = _CLIENT_AUTH[auth]
    if ctx.verify_mode != ssl.CERT_NONE:
        if ca_key is None:
            assert auth_node is not None
            raise r.error(auth_node[1], f"tls_server_config: client_auth_type {auth} needs "
                                        "client_ca_file")
        try:
            if ca_key == "client_ca_file":
                ctx.load_verify_locations(cafile=str(r.file(keys[ca_key][1], ca_key)))
            else:
                ctx.load_verify_locations(cadata=r.string(keys[ca_key][1], ca_key))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise r.error(keys[ca_key][1], f"tls_server_config: {ca_key}: cannot load the "
                                           f"CA certificates: {_ssl_reason(exc)}") from None

    sans: frozenset[str] | None = None
    if "client_allowed_sans" in keys:
        k, v = keys["client_allowed_sans"]
        if auth != "RequireAndVerifyClientCert":
            raise r.error(k, "tls_server_config: client_allowed_sans requires client_auth_type "
                             "RequireAndVerifyClientCert")
        sans = frozenset(_san(s) for s in r.strings(v, "client_allowed_sans"))
    if "prefer_server_cipher_suites" in keys:
        if not r.boolean(keys["prefer_server_cipher_suites"][1], "prefer_server_cipher_suites"):
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx, sans


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _san(text: str) -> str:
    """A SAN as compared: an IP address in its canonical form, anything else as is."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return text


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and check the file; raises :class:`WebConfigError` (one line)."""
    return _load(Path(path), _Reader(Path(path)))


def _load(path: Path, r: _Reader) -> WebConfig:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise WebConfigError(f"{path}: {line}not YAML: {problem}") from None
    if root is None:
        return WebConfig(path)
    top = r.mapping(root, "the file", None)
    for name, (k, _) in top.items():
        if name == "rate_limit":
            raise r.error(k, "rate_limit is not supported by memledger (its connections are "
                             "capped instead); remove it")
        if name not in ("tls_server_config", "http_server_config", "basic_auth_users"):
            raise r.error(k, f"unknown key {name!r}")
    tls, sans = _tls(r, top["tls_server_config"][1]) if "tls_server_config" in top else (None, None)
    headers: dict[str, str] = {}
    if "http_server_config" in top:
        http = r.mapping(top["http_server_config"][1], "http_server_config", ("http2", "headers"))
        if "http2" in http:
            r.boolean(http["http2"][1], "http_server_config: http2")
        if "headers" in http:
            for name, (k, v) in r.mapping(http["headers"][1], "http_server_config: headers",
                                          None).items():
                if name not in _HEADERS:
                    raise r.error(k, f"http_server_config: headers: {name!r} cannot be set "
                                     f"(only {', '.join(_HEADERS)})")
                value = r.string(v, name)
                allowed = _HEADERS[name]
                if allowed is not None and value not in allowed:
                    raise r.error(v, f"http_server_config: headers: {name} {value!r}: expected "
                                     f"one of {', '.join(allowed)}")
                if re.search(r"[\x00-\x1f\x7f]", value):
                    raise r.error(v, f"http_server_config: headers: {name}: a control character")
                if value:  # blank: unset
                    headers[name] = value
    users: dict[str, str] = {}
    if "basic_auth_users" in top:
        for name, (_, v) in r.mapping(top["basic_auth_users"][1], "basic_auth_users", None).items():
            hashed = r.string(v, f"basic_auth_users: {name}")
            if not _BCRYPT.fullmatch(hashed):
                raise r.error(v, f"basic_auth_users: {name}: not a bcrypt hash "
                                 "(expected $2y$10$ and 53 characters)")
            users[name] = hashed
    return WebConfig(path, tls, sans, headers, users)


def peer_identity(sock: Any, allowed_sans: frozenset[str] | None) -> tuple[bool, Identity | None]:
    """After the handshake: (admitted, identity). A verified certificate's subject CN,
    else its first DNS name, is the identity; with ``allowed_sans``, a certificate
    without one of them is not admitted."""
    cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
    if not cert:  # none, or not verified
        return allowed_sans is None, None
    sans = [(str(entry[0]), str(entry[1])) for entry in cert.get("subjectAltName", ())]
    if allowed_sans is not None and not any(
            (_san(v) if kind == "IP Address" else v) in allowed_sans for kind, v in sans):
        return False, None
    cn = next((str(attr[1]) for rdn in cert.get("subject", ()) for attr in rdn
               if attr[0] == "commonName"), None)
    name = cn or next((v for kind, v in sans if kind == "DNS"), None)
    return True, Identity("certificate", name) if name else None


class WebConfigSource:
    """The file as it is now: read again when it, or a file it names, changes. An
    invalid file is logged once per change of its error, and its error raised."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._files: list[Path] = [self.path]
        self._stamp: tuple[object, ...] | None = None
        self._result: WebConfig | WebConfigError | None = None
        self._logged: str | None = None
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()  # one bcrypt at a time: it is CPU-bound
        self._verified: OrderedDict[tuple[str, str, str], bool] = OrderedDict()
        self._decoy: str | None = None

    def _stamps(self) -> tuple[object, ...]:
        out: list[object] = []
        for p in self._files:
            try:
                st = p.stat()
                out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except OSError as exc:
                out.append(exc.errno)
        return tuple(out)

    def current(self) -> WebConfig:
        """The configuration, read again if a file changed; raises WebConfigError."""
        with self._lock:
            stamp = self._stamps()
            if stamp != self._stamp or self._result is None:
                r = _Reader(self.path)
                try:
                    result: WebConfig | WebConfigError = _load(self.path, r)
                except WebConfigError as exc:
                    result = exc
                # The stamps taken before the reading: a file replaced while it was read is
                # read again next time. A file named for the first time is stamped now.
                files = [self.path, *r.files]
                if files != self._files:
                    self._files = files
                    stamp = self._stamps()
                self._stamp = stamp
                if isinstance(result, WebConfigError):
                    if str(result) != self._logged:
                        log.error("%s; refusing HTTP connections until it is fixed", result)
                        self._logged = str(result)
                elif self._result is not None:
                    log.info("%s: %s", self.path, "valid again" if self._logged else "read again")
                    self._logged = None
                self._result = result
            if isinstance(self._result, WebConfigError):
                raise self._result
            return self._result

    def authenticate(self, cfg: WebConfig, header: str | None) -> str | None:
        """The user an ``Authorization: Basic`` header proves, or None."""
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        hashed = cfg.users.get(user)
        key = (user, hashed or "", password)
        with self._cache_lock:
            ok = self._verified.get(key)
            if ok is not None:
                self._verified.move_to_end(key)
        if ok is None:
            with self._bcrypt_lock:
                if hashed is None:
                    # Spend a bcrypt anyway, so that a missing user answers as slowly as a
                    # wrong password (no user enumeration by timing).
                    if self._decoy is None:
                        self._decoy = bcrypt.hashpw(b"decoy", bcrypt.gensalt(10)).decode()
                    with contextlib.suppress(ValueError):
                        bcrypt.checkpw(password.encode(), self._decoy.encode())
                    ok = False
                else:
                    try:
                        ok = bcrypt.checkpw(password.encode(), hashed.encode())
                    except ValueError:
                        ok = False
            with self._cache_lock:
                self._verified[key] = ok
                while len(self._verified) > _CACHE_SIZE:
                    self._verified.popitem(last=False)
        return user if ok else None

    def cached(self, user: str, password: str) -> bool | None:
        """The cached verdict for this user and password under the current hash (tests)."""
        cfg = self.current()
        with self._cache_lock:
            return self._verified.get((user, cfg.users.get(user) or "", password))
