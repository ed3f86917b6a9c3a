"""The HTTP client configuration file of ``--forward.config.file``, in the form of
Prometheus's HTTP client settings (``tls_config`` and ``basic_auth``)::

    tls_config:
      ca_file: ca.crt               # the CA that signed the fleet daemon's certificate
      cert_file: host.crt           # this host's client certificate (its CN: the host)
      key_file: host.key
      server_name: fleet.example    # SNI and the name checked (default: the URL's host)
      insecure_skip_verify: false
      min_version: TLS12            # TLS10, TLS11, TLS12 (default) or TLS13
      max_version: TLS13
    basic_auth:
      username: host1
      password_file: host1.password # or password: ... (not both)

Strict: an unknown key, a key given twice or a value of the wrong type is an error, one
line, ``FILE: line N: what``. Relative paths are relative to the file. The file and a
password or key file hold secrets, so one that others may read (mode & 0o004) is refused,
as OpenSSH refuses a private key anyone can read.

:class:`ClientSource` loads the file at once (every error shows at start) and again,
with the certificates and the password, whenever one of those files changes (a rotated
certificate is used from the next request); a change that does not load keeps the last
good settings and is logged once.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ("ClientConfig", "ClientConfigError", "ClientSource", "Settings", "TLSConfig", "auth_header",
           "load_client_config", "ssl_context")

log = logging.getLogger("memledger.forward")

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"


class ClientConfigError(ValueError):
    """The client configuration cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    min_version: str = "TLS12"
    max_version: str | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """One reading of the file: paths absolute, and the lines keys were on (for errors
    found later, such as a certificate that does not load)."""

    path: str | None = None
    tls: TLSConfig = field(default_factory=TLSConfig)
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """``FILE: line N`` of ``key`` (dotted, like ``tls_config.ca_file``)."""
        line = self.lines.get(key)
        return f"{self.path}: line {line}" if line is not None else f"{self.path}"

    def files(self) -> tuple[str, ...]:
        """Every file this configuration reads (the file itself first)."""
        t = self.tls
        return tuple(f for f in (self.path, t.ca_file, t.cert_file, t.key_file,
                                 self.password_file) if f is not None)


def _not_others_readable(path: str, what: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ClientConfigError(f"{what}: {os.strerror(exc.errno or 0) or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ClientConfigError(f"{what}: not a regular file")
    if st.st_mode & stat.S_IROTH:
        raise ClientConfigError(f"{what}: readable by others (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}), and it holds secrets; "
                                "refusing to use it (chmod o-r)")


class _Reader:
    """Walks the composed YAML nodes, so that every error has its line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.lines: dict[str, int] = {}

    def error(self, node: yaml.Node, what: str) -> ClientConfigError:
        return ClientConfigError(f"{self.path}: line {node.start_mark.line + 1}: {what}")

    def mapping(self, node: yaml.Node, where: str, keys: tuple[str, ...]) -> dict[str, yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{where or 'the file'} must be a mapping")
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else None
            dotted = f"{where}.{name}" if where else str(name)
            if name not in keys:
                shown = name if name is not None else "a non-scalar key"
                raise self.error(k, f"unknown key {dotted if name is not None else shown!r} "
                                    f"(known: {', '.join(keys)})")
            if name in out:
                raise self.error(k, f"{dotted} given twice")
            out[name] = v
            self.lines[dotted] = k.start_mark.line + 1
        return out

    def text(self, node: yaml.Node | None, dotted: str) -> str | None:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag == _BOOL:
            raise self.error(node, f"{dotted} must be a string")
        return str(node.value)

    def file(self, node: yaml.Node | None, dotted: str) -> str | None:
        value = self.text(node, dotted)
        if value is None:
            return None
        if not value:
            raise self.error(node, f"{dotted} is empty")  # type: ignore[arg-type]
        return os.path.normpath(os.path.join(self.base, value))

    def flag(self, node: yaml.Node | None, dotted: str) -> bool:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
            return False
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
            raise self.error(node, f"{dotted} must be true or false")
        return str(node.value).lower() in ("true", "yes", "on", "y")

    def version(self, node: yaml.Node | None, dotted: str) -> str | None:
        value = self.text(node, dotted)
        if value is not None and value not in _TLS_VERSIONS:
            raise self.error(node, f"{dotted} {value!r}: one of "  # type: ignore[arg-type]
                             f"{', '.join(_TLS_VERSIONS)}")
        return value


def load_client_config(path: str) -> ClientConfig:
    """Read and check the file (not yet the certificates: :func:`ssl_context` does)."""
    _not_others_readable(path, path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = os.strerror(exc.errno or 0) if isinstance(exc, OSError) else "not UTF-8 text"
        raise ClientConfigError(f"{path}: {why}") from None
    r = _Reader(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}:" if mark is not None else ""
        raise ClientConfigError(f"{path}:{line} {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ClientConfigError(f"{path}: {exc}") from None
    if root is None:
        return ClientConfig(path=path)
    top = r.mapping(root, "", ("tls_config", "basic_auth"))
    tls: dict[str, yaml.Node] = {}
    auth: dict[str, yaml.Node] = {}
    if "tls_config" in top:
        tls = r.mapping(top["tls_config"], "tls_config",
                        ("ca_file", "cert_file", "key_file", "server_name",
                         "insecure_skip_verify", "min_version", "max_version"))
    if "basic_auth" in top:
        auth = r.mapping(top["basic_auth"], "basic_auth", ("username", "password", "password_file"))
    t = TLSConfig(
        ca_file=r.file(tls.get("ca_file"), "tls_config.ca_file"),
        cert_file=r.file(tls.get("cert_file"), "tls_config.cert_file"),
        key_file=r.file(tls.get("key_file"), "tls_config.key_file"),
        server_name=r.text(tls.get("server_name"), "tls_config.server_name") or None,
        insecure_skip_verify=r.flag(tls.get("insecure_skip_verify"),
                                    "tls_config.insecure_skip_verify"),
        min_version=r.version(tls.get("min_version"), "tls_config.min_version") or "TLS12",
        max_version=r.version(tls.get("max_version"), "tls_config.max_version"))
    if (t.cert_file is None) != (t.key_file is None):
        node = tls.get("cert_file") or tls["key_file"]
        raise r.error(node, "tls_config: cert_file and key_file go together")
    if t.max_version is not None and _TLS_VERSIONS[t.max_version] < _TLS_VERSIONS[t.min_version]:
        raise r.error(tls["max_version"], "tls_config.max_version is below min_version")
    cfg = ClientConfig(path=path, tls=t,
                       username=r.text(auth.get("username"), "basic_auth.username"),
                       password=r.text(auth.get("password"), "basic_auth.password"),
                       password_file=r.file(auth.get("password_file"), "basic_auth.password_file"),
                       lines=r.lines)
    if cfg.password is not None and cfg.password_file is not None:
        raise r.error(auth["password_file"], "basic_auth: password and password_file are "
                                             "exclusive")
    if auth and not cfg.username:
        raise r.error(top["basic_auth"], "basic_auth.username is missing")
    return cfg


def ssl_context(cfg: ClientConfig) -> ssl.SSLContext:
    """The TLS client context of ``cfg``: its CA (else the system's), its client
    certificate, its protocol versions."""
    t = cfg.tls
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = _TLS_VERSIONS[t.min_version]
    if t.max_version is not None:
        ctx.maximum_version = _TLS_VERSIONS[t.max_version]
    for key, path in (("tls_config.ca_file", t.ca_file), ("tls_config.cert_file", t.cert_file),
                      ("tls_config.key_file", t.key_file)):
        if path is not None and not os.path.isfile(path):
            why = "not a regular file" if os.path.exists(path) else "No such file or directory"
            raise ClientConfigError(f"{cfg.where(key)}: {key} {path}: {why}")
    if t.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=t.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ClientConfigError(f"{cfg.where('tls_config.ca_file')}: tls_config.ca_file "
                                    f"{t.ca_file}: no CA certificate in it ({_why(exc)})") from None
    if t.cert_file is not None and t.key_file is not None:
        _not_others_readable(t.key_file, f"{cfg.where('tls_config.key_file')}: "
                                         f"tls_config.key_file {t.key_file}")
        try:
            ctx.load_cert_chain(t.cert_file, t.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ClientConfigError(f"{cfg.where('tls_config.cert_file')}: tls_config.cert_file "
                                    f"{t.cert_file} with key_file {t.key_file}: {_why(exc)}") from None
    if t.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc)


def auth_header(cfg: ClientConfig) -> str | None:
    """The ``Authorization`` header of basic_auth (the password file's text without its
    surrounding white space, as Prometheus reads it), or None."""
    if cfg.username is None:
        return None
    password = cfg.password or ""
    if cfg.password_file is not None:
        where = f"{cfg.where('basic_auth.password_file')}: basic_auth.password_file " \
                f"{cfg.password_file}"
        _not_others_readable(cfg.password_file, where)
        try:
            password = Path(cfg.password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientConfigError(f"{where}: {_why(exc)}") from None
    token = base64.b64encode(f"{cfg.username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


@dataclass(frozen=True, slots=True)
class Settings:
    """What a request uses: the TLS context and the Authorization header (or None)."""

    context: ssl.SSLContext
    authorization: str | None
    server_name: str | None


def _stamp(paths: tuple[str, ...]) -> tuple[Any, ...]:
    out: list[Any] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


class ClientSource:
    """The client settings of a configuration file (or the defaults: the system's CAs,
    no client certificate), read again when a file they come from changes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._files: tuple[str, ...] = ()
        self._stamp: tuple[Any, ...] = ()
        self.settings = self._load()

    def _load(self) -> Settings:
        cfg = load_client_config(self.path) if self.path is not None else ClientConfig()
        files = cfg.files()
        stamp = _stamp(files)
        settings = Settings(ssl_context(cfg), auth_header(cfg), cfg.tls.server_name)
        self._files, self._stamp = files, stamp
        return settings

    def current(self) -> Settings:
        """The settings, read again first when a file they came from changed since (the
        file itself, its certificates, key or password file): the stamp is inode, size
        and modification time. Settings that no longer load are logged once, until the
        files change again, and the last good ones stay in use."""
        if self.path is None:
            return self.settings
        stamp = _stamp(self._files)
        if stamp == self._stamp:
            return self.settings
        try:
            self.settings = self._load()
        except ClientConfigError as exc:
            self._stamp = stamp
            log.error("%s; forwarding goes on with the settings read before", exc)
            return self.settings
        log.info("%s: read again (a file it names changed)", self.path)
        return self.settings
