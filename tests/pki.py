"""A private certificate authority for the TLS tests, made with the openssl command line, as
docs/fleet.md tells an operator to: a CA, server certificates for names and addresses, and
client certificates whose subject CN is a host's identity.

Every key is EC P-256 (fast to make) and every certificate lives a day.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ("CA", "Issued", "make_ca")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@dataclass(frozen=True)
class CA:
    dir: Path
    cert: Path
    key: Path

    def issue(self, name: str, *, cn: str | None = None, dns: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), client: bool = False) -> Issued:
        """A certificate signed by this CA, saved as ``NAME.crt`` and ``NAME.key``: for a
        server (``dns``/``ips`` as its subject alternative names) or a client (``client``;
        its subject CN is ``cn``, default ``name``)."""
        key, csr, crt = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.dir / f"{name}.ext"
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}"]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn or name}")
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                 "-CAcreateserial", "-days", "1", "-out", crt, "-extfile", ext)
        key.chmod(0o600)
        return Issued(crt, key)


def make_ca(dir: Path, name: str = "ca") -> CA:
    """A new self-signed CA in ``dir`` (``NAME.crt``, ``NAME.key``)."""
    dir.mkdir(parents=True, exist_ok=True)
    key, crt = dir / f"{name}.key", dir / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", crt, "-days", "1", "-subj", f"/CN=memledger test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return CA(dir, crt, key)
