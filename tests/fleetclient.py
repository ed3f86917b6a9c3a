"""A fleet's clients in the tests: a host's or Prometheus's TLS context from the test CA
(tests/pki.py), a POST of a capture to a fleet daemon, and a GET of a daemon's page."""

from __future__ import annotations

import hashlib
import http.client
import ssl

from pki import CA

__all__ = ("client_context", "get", "metric", "post_capture")


def client_context(ca: CA, client: str | None) -> ssl.SSLContext:
    """A client trusting ``ca``'s servers, with the client certificate ``client`` of it."""
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if client is not None:
        ctx.load_cert_chain(ca.dir / f"{client}.crt", ca.dir / f"{client}.key")
    return ctx


def post_capture(address: str, ctx: ssl.SSLContext, body: bytes) -> tuple[int, str]:
    """POST /api/v1/captures to HOST:PORT as a forwarding host does; (status, body)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    try:
        conn.request("POST", "/api/v1/captures", body,
                     {"Content-Type": "application/octet-stream",
                      "X-Memledger-Sha256": hashlib.sha256(body).hexdigest()})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def get(address: str, ctx: ssl.SSLContext | None, path: str) -> str:
    """A page of a daemon at HOST:PORT, over TLS with ``ctx``, else plain HTTP."""
    host, port = address.rsplit(":", 1)
    conn = (http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30) if ctx
            else http.client.HTTPConnection(host, int(port), timeout=30))
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def metric(address: str, ctx: ssl.SSLContext | None, sample: str) -> float | None:
    """A sample of a daemon's /metrics, by name and labels as exported (None: absent)."""
    for line in get(address, ctx, "/metrics").splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
